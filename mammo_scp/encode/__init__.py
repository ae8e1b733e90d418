"""DICOM result objects built from :mod:`mammo_scp.results`.

* :func:`build_seg`: one BINARY SEG per image with a segmented mass.
* :func:`build_measurement_report`: one TID 1500 Comprehensive 3D SR per study.
* :func:`build_no_findings_report`: one Enhanced SR "no finding" per study without findings.
* :func:`build_cad_sr`: one Mammography CAD SR (TID 4000) per study.
* :func:`build_gsps`: one Grayscale Softcopy Presentation State per image with findings.
* :func:`save_result`: any of them as a DICOM file.
"""

from mammo_scp.encode.cad_sr import build_cad_sr
from mammo_scp.encode.common import save_result
from mammo_scp.encode.gsps import build_gsps
from mammo_scp.encode.no_findings import build_no_findings_report
from mammo_scp.encode.seg import build_seg
from mammo_scp.encode.sr import build_measurement_report, has_findings

__all__ = ["build_cad_sr", "build_gsps", "build_measurement_report",
           "build_no_findings_report", "build_seg", "has_findings", "save_result"]
