"""What every result object takes from its source images (identity, laterality, view),
and how every result object is written (:func:`save_result`).

The result objects live in the source study, so the Patient, Patient Study,
General Study and Clinical Trial Subject/Study attributes are copied verbatim
from the source; anything else would split the study in the PACS.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any, BinaryIO

from highdicom.sr import CodedConcept
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.valuerep import VALIDATORS, VR, PersonName

from mammo_scp import __version__
from mammo_scp.encode.codes import Laterality
from mammo_scp.preprocess import plausible_spacing
from mammo_scp.results import ImageAnalysis, ModelInfo

logger = logging.getLogger(__name__)

MANUFACTURER = "mammo-scp"
SOFTWARE_VERSION = f"mammo-scp {__version__}"
DEVICE_SERIAL_NUMBER = "0"

# Patient, Patient Study, General Study and Clinical Trial modules (PS3.3 C.7.1.1,
# C.7.2.1, C.7.2.2, C.7.1.3, C.7.2.3): copied whenever the source has them.
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientComments",
    "EthnicGroup",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "AdditionalPatientHistory",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
)

# Attributes whose values must agree across all images of one study-level object.
STUDY_IDENTITY_KEYWORDS: tuple[str, ...] = ("StudyInstanceUID", "PatientID", "PatientName")


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the patient and study attributes of ``source`` into ``target`` (overwriting)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(target, keyword, deepcopy(source[keyword].value))


def laterality_of(source: Dataset) -> Laterality:
    """The breast an MG image shows: ImageLaterality if R or L, else series Laterality (the
    rule ingest follows, so an image with ImageLaterality B and Laterality L is of L).

    Raises
    ------
    ValueError
        If the image is not of exactly one breast (R or L).
    """
    values = [str(source.get(keyword) or "").strip().upper()
              for keyword in ("ImageLaterality", "Laterality")]
    for value in values:
        if value in ("R", "L"):
            return Laterality(value)
    raise ValueError(
        f"source {source.get('SOPInstanceUID')} has ImageLaterality {values[0][:4]!r} and "
        f"Laterality {values[1][:4]!r}; only single-breast images (R or L) can be encoded"
    )


#: Attributes of type 2 in the Patient and General Study modules: when the source's value
#: is absent or not valid they are copied empty, not left out.
TYPE_2_KEYWORDS = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
})
#: Enumerated values the encoders (highdicom) insist on.
ENUMERATED: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "ImageLaterality": frozenset({"R", "L", "U", "B"}),
    "Laterality": frozenset({"R", "L"}),
}
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                       "TM", "UC", "UI", "UR", "UT"})
#: Control characters text values may hold (PS3.5 6.1.3): none in short strings; LF, FF, CR
#: and TAB in the long texts.
_TEXT_CONTROLS = {"LT": "\n\f\r\t", "ST": "\n\f\r\t", "UT": "\n\f\r\t"}


def valid_header(source: Dataset) -> Dataset:
    """A copy of ``source`` without its pixel data, holding only the values the standard
    allows, so that what the result objects copy from it is valid whatever was received.

    An invalid value (too long, bad characters such as NUL, ESC or a backslash in a single
    name, a date that is no date, an enumerated value out of its set, an unknown character
    set, a pixel spacing of 0) is left out; for type 2 attributes of the patient and study
    it is copied empty. Values the node cannot decode are left out too.
    """
    copy, _ = _valid_items(source, depth=0)
    for keyword in TYPE_2_KEYWORDS - set(copy.dir()):  # required, if empty: the encoders
        copy.add_new(keyword, dictionary_VR(keyword), None)  # read them
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    terms = [str(t).strip() for t in _values(source.get("SpecificCharacterSet"))]
    known = all(term in python_encoding or term == "" for term in terms)
    if "SpecificCharacterSet" in copy and not known:
        del copy.SpecificCharacterSet
    if not known and _has_non_ascii(copy):
        copy.SpecificCharacterSet = "ISO_IR 192"  # the values are Unicode here: say UTF-8
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            plausible_spacing(copy, keyword)
        except ValueError:
            del copy[keyword]
    orientation = [str(v) for v in _values(copy.get("PatientOrientation"))]
    if "PatientOrientation" in copy and (
            len(orientation) != 2 or not all(_ORIENTATION.match(v) for v in orientation)):
        del copy.PatientOrientation
    return copy


_ORIENTATION = re.compile(r"^[APRLHFX]{1,3}$")


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float | PersonName):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def _valid_items(source: Dataset, depth: int) -> tuple[Dataset, bool]:
    """The valid elements of ``source``, and whether they were all valid. A sequence is
    copied only whole: one invalid value in one of its items (a code meaning too long, say)
    leaves the sequence out, so no item is copied without an attribute it requires."""
    copy = Dataset()
    whole = True
    for tag in list(source.keys()):
        if tag in _PIXEL_TAGS and depth == 0:
            continue
        try:
            element = source[tag]
            if not _standard_vr(element):
                raise ValueError(f"{element.keyword} has VR {element.VR}")
            if element.VR == VR.SQ:
                checked = [_valid_items(item, depth + 1) for item in element.value] \
                    if depth < MAX_SEQUENCE_DEPTH else []
                ok = depth < MAX_SEQUENCE_DEPTH and all(valid for _, valid in checked)
                if ok:
                    copy.add_new(tag, VR.SQ, [item for item, _ in checked])
            else:
                ok = _valid_value(element)
                if ok:
                    copy.add(deepcopy(element))
        except Exception:  # noqa: BLE001 - an element pydicom cannot even convert
            ok = False
        if not ok:
            whole = False
            if keyword_for_tag(tag) in TYPE_2_KEYWORDS and depth == 0:
                copy.add_new(tag, dictionary_VR(tag), None)
    return copy, whole


#: Sequences nested deeper than this are not copied (no source attribute the results copy
#: nests that far).
MAX_SEQUENCE_DEPTH = 4


def _standard_vr(element: DataElement) -> bool:
    """False for a standard attribute sent with another VR than the standard's."""
    if element.tag.is_private or element.keyword == "":
        return True
    return str(element.VR) in dictionary_VR(element.tag).split(" or ")


def _valid_value(element: DataElement) -> bool:
    """True when every value of the element is valid for its VR and VM."""
    vr = str(element.VR)
    values = _values(element.value)
    if vr not in _TEXT_VRS and vr not in ("US", "SS", "UL", "SL", "FL", "FD"):
        return True  # binary values (OB, OW, ...) are copied as they are
    if element.tag.is_private or element.keyword == "":
        return True
    vm = dictionary_VM(element.tag)
    if vm == "1" and len(values) > 1:
        return False
    allowed = ENUMERATED.get(element.keyword)
    if allowed is not None and not all(str(v) in allowed for v in values):
        return False
    controls = _TEXT_CONTROLS.get(vr, "")
    validate: Callable[[str, Any], tuple[bool, str]] | None = VALIDATORS.get(vr)
    for value in values:
        if vr in _TEXT_VRS:
            if isinstance(value, bytes):
                return False  # not decoded: the character set was not understood
            value = str(value)  # a PersonName as the text it was read from
            if any(ord(c) < 0x20 and c not in controls for c in value):
                return False
        if validate is not None and not validate(vr, value)[0]:
            return False
    return True


def _has_non_ascii(ds: Dataset) -> bool:
    for element in ds:
        if element.VR == VR.SQ:
            found = any(_has_non_ascii(item) for item in element.value)
        else:
            found = element.VR in _TEXT_VRS and any(
                not str(v).isascii() for v in _values(element.value))
        if found:
            return True
    return False


def view_label_of(source: Dataset) -> str:
    """A short view label such as 'CC' or 'MLO' (ViewPosition, else the view code meaning)."""
    if source.get("ViewPosition"):
        return str(source.ViewPosition)
    code = view_code_of(source)
    return code.meaning if code is not None else "?"


#: View codes (CID 4014, SNOMED CT) of the View Positions the node knows, for images that
#: carry a View Position but no (valid) View Code Sequence.
VIEW_POSITION_CODES: dict[str, tuple[str, str]] = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"),
    "LM": ("399352003", "latero-medial"),
}


def view_code_of(source: Dataset) -> CodedConcept | None:
    """The image's view (CID 4014) from ViewCodeSequence, else from a View Position the
    node knows (CC, MLO, ML, LM); None when neither says."""
    items = source.get("ViewCodeSequence")
    if items:
        item = items[0]
        if item.get("CodeValue") and item.get("CodingSchemeDesignator") and \
                item.get("CodeMeaning"):
            # Only the code itself: View Modifier Code Sequence belongs to the image, not
            # to an SR content item.
            return CodedConcept(value=item.CodeValue,
                                scheme_designator=item.CodingSchemeDesignator,
                                meaning=item.CodeMeaning)
    position = VIEW_POSITION_CODES.get(str(source.get("ViewPosition") or "").strip().upper())
    if position is not None:
        return CodedConcept(value=position[0], scheme_designator="SCT", meaning=position[1])
    return None


def image_label(source: Dataset) -> str:
    """'RCC', 'LMLO', ...: how radiologists name a view."""
    return f"{laterality_of(source).value}{view_label_of(source)}"


def check_analysis(source: Dataset, analysis: ImageAnalysis) -> None:
    """Raise ValueError unless ``analysis`` belongs to ``source`` and matches its pixel grid."""
    if analysis.sop_instance_uid != source.SOPInstanceUID:
        raise ValueError(
            f"analysis is for SOP Instance {analysis.sop_instance_uid}, "
            f"but source is {source.SOPInstanceUID}"
        )
    shape = (int(source.Rows), int(source.Columns))
    if analysis.mask.shape != shape:
        raise ValueError(
            f"analysis mask has shape {analysis.mask.shape}, source image is {shape} "
            "(Rows, Columns); map the mask back to source pixels first"
        )


def study_identity(source: Dataset) -> tuple[str, ...]:
    """What must agree across the images of one study-level object, as the result objects
    would copy it (:func:`valid_header`)."""
    header = valid_header(source)
    return tuple(str(header.get(keyword) or "") for keyword in STUDY_IDENTITY_KEYWORDS)


def check_one_study(sources: Sequence[Dataset]) -> None:
    """Raise ValueError unless ``sources`` is non-empty and all of one patient and study."""
    if not sources:
        raise ValueError("sources must contain at least one image")
    first = sources[0]
    for source in sources[1:]:
        for keyword in STUDY_IDENTITY_KEYWORDS:
            if source.get(keyword) != first.get(keyword):
                raise ValueError(
                    f"sources mix studies: {keyword} of {source.SOPInstanceUID} differs "
                    f"from that of {first.SOPInstanceUID}"
                )


def single_model(models: Sequence[ModelInfo], role: str) -> ModelInfo:
    """The one model that made all analyses, for ``role`` ('segmenter' or 'detector').

    Raises
    ------
    ValueError
        If the analyses of one object come from different models or versions.
    """
    distinct = set(models)
    if len(distinct) != 1:
        raise ValueError(
            f"analyses must all come from one {role}, got {sorted(map(str, distinct))}"
        )
    return distinct.pop()


def pair_analyses(
    sources: Sequence[Dataset], analyses: Sequence[ImageAnalysis]
) -> list[tuple[Dataset, ImageAnalysis]]:
    """Match each source image with its analysis by SOP Instance UID, in source order.

    Raises
    ------
    ValueError
        If an image has no analysis, an analysis has no image, or a mask does not fit.
    """
    by_uid = {analysis.sop_instance_uid: analysis for analysis in analyses}
    if len(by_uid) != len(analyses):
        raise ValueError("analyses contains two analyses of the same SOP Instance")
    source_uids = [str(source.SOPInstanceUID) for source in sources]
    if len(set(source_uids)) != len(source_uids):
        raise ValueError("sources contains the same SOP Instance twice")
    missing = [uid for uid in source_uids if uid not in by_uid]
    extra = sorted(set(by_uid) - set(source_uids))
    if missing or extra:
        raise ValueError(
            f"analyses do not match sources: no analysis for {missing}, no source for {extra}"
        )
    pairs = [(source, by_uid[str(source.SOPInstanceUID)]) for source in sources]
    for source, analysis in pairs:
        check_analysis(source, analysis)
    return pairs


def save_result(ds: Dataset, target: str | Path | BinaryIO) -> None:
    """Write a result object as a DICOM file: the bytes of ``ds.save_as(target,
    enforce_file_format=True)``.

    pydicom corrects ambiguous VRs (US or SS, OB or OW) of a dataset that was not read
    in the encoding being written, and does it again for every nested item as it writes
    it: a report's content items were each walked about five times. Here the
    correction runs once over the whole tree and each item is marked as already in the
    target encoding: a two-finding report took 34 ms to write here, now 29 (CPU time, best
    of 40; medians 54 and 49 ms). A test checks the bytes are pydicom's.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    correct_ambiguous_vr(ds, syntax.is_little_endian)
    items = [ds]
    while items:
        item = items.pop()
        # the character set pydicom compares the original one with before writing
        item.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian,
                                   item._character_set)
        for element in item:  # iterating converts raw elements, as pydicom's writer would
            if element.VR == VR.SQ:
                items.extend(element.value)
    ds.save_as(target, enforce_file_format=True)
