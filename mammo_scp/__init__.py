"""mammo-scp: a DICOM node that runs mammography mass detection and returns SEG and SR."""

__version__ = "0.1.0"
