"""Rules for input files shared with the pipeline's Groovy samplesheet check: both read
``input_rules.json`` beside this module, so a rule is written once."""
from __future__ import annotations

import json
import re
from pathlib import Path

RULES_FILE = Path(__file__).with_name("input_rules.json")
_RULES: dict = json.loads(RULES_FILE.read_text())

#: a sample name (it names output folders and files); matched whole
SAMPLE_NAME_RE = re.compile(_RULES["sample_name_pattern"])
SAMPLE_NAME_CHARACTERS: str = _RULES["sample_name_characters"]
#: sample names that would collide with the pipeline's own output folders
RESERVED_SAMPLE_NAMES: tuple[str, ...] = tuple(_RULES["reserved_sample_names"])
SAMPLESHEET_REQUIRED_COLUMNS: tuple[str, ...] = tuple(_RULES["samplesheet_required_columns"])
COLUMN_NAME_RE = re.compile(_RULES["column_name_pattern"])
#: counts given as a file (anything else is a folder)
COUNTS_FILE_EXTENSIONS: tuple[str, ...] = tuple(_RULES["counts_file_extensions"])
#: a folder holding one of these is a 10x matrix folder (read in this order)
MATRIX_FILES: tuple[str, ...] = tuple(_RULES["matrix_files"])
#: in a counts folder that is not a matrix folder, where the counting tools put the filtered
#: matrix, in order of preference: Cell Ranger count (v3+ and v2), Cell Ranger multi, STARsolo
COUNTS_IN_FOLDER: tuple[str, ...] = tuple(_RULES["counts_in_folder"])
#: Cell Ranger multi: one filtered matrix per sample
COUNTS_MULTI_GLOB: str = _RULES["counts_multi_glob"]
#: file suffixes of a marker panel (bundled panels are looked up by name with these)
MARKER_FILE_SUFFIXES: tuple[str, ...] = tuple(_RULES["marker_file_suffixes"])


def is_sample_name(name: str) -> bool:
    return SAMPLE_NAME_RE.fullmatch(name or "") is not None
