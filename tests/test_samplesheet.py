"""Every samplesheet check of the initialisation subworkflow, and `nextflow config` of every profile.

The checks are plain Groovy functions (subworkflows/local/pipeline_initialisation/main.nf);
tests/nf/check_samplesheets.nf calls them on all the sheets below in one Nextflow start, so
each message is checked without starting a pipeline per case (test_pipeline.py runs a few of
them through the whole pipeline, and checks that no task starts).
"""
from __future__ import annotations

import json
import re

import pytest

from nextflow_helpers import REPO, explain as _explain, flat_config as _flat_config, nextflow

SHEETS = {
    # name: (text, expected fragments of the one message; line numbers count every physical line)
    "empty.csv": ("", ["the file is empty"]),
    "comments_only.csv": ("# a comment\n\n   \n", ["the file is empty"]),
    "unnamed_column.csv": ("sample,counts,\ns1,s1.h5ad,\n", ["line 1", "column 3 of the header has no name"]),
    "bad_column_name.csv": ("sample,counts,my col\ns1,s1.h5ad,x\n", ["line 1", "unknown column 'my col'"]),
    "column_twice.csv": ("sample,counts,batch,batch\ns1,s1.h5ad,a,b\n", ["line 1", "column 'batch' appears twice"]),
    "missing_column.csv": ("sample,count\ns1,s1.h5ad\n", ["line 1", "missing column 'counts'"]),
    "header_only.csv": ("sample,counts\n", ["no samples, only the header line"]),
    "extra_value.csv": ("sample,counts\ns1,s1.h5ad,extra\n", ["line 2", "3 values for 2 columns", "value 'extra'"]),
    "missing_value.csv": ("sample,counts,batch\ns1,s1.h5ad\n", ["line 2", "2 values for 3 columns",
                                                                "missing column 'batch'"]),
    "empty_sample.csv": ("sample,counts\n,s1.h5ad\n", ["line 2", "the sample name is empty"]),
    "bad_sample_name.csv": ("sample,counts\ns 1,s1.h5ad\n", ["line 2", "sample name 's 1' has characters", "'s_1'"]),
    "leading_dot_sample.csv": ("sample,counts\n.s 1,s1.h5ad\n", ["line 2", "sample name '.s 1' has characters",
                                                               "e.g. 's_1'"]),
    "reserved_sample.csv": ("sample,counts\ncohort,s1.h5ad\n", ["line 2", "sample name 'cohort' is reserved"]),
    "duplicate_sample.csv": ("# sheet\nsample,counts\ns1,s1.h5ad\n\ns1,s1.h5ad\n",
                             ["line 5", "duplicate sample 's1' (also on line 3)"]),
    "empty_counts.csv": ("sample,counts\ns1,\n", ["line 2", "the counts path of sample 's1' is empty"]),
    "missing_counts.csv": ("sample,counts\ns1,nope.h5ad\n", ["line 2", "counts file 'nope.h5ad' of sample 's1' does not exist",
                                                             "looked for"]),
    "wrong_extension.csv": ("sample,counts\ns1,s1.txt\n", ["line 2", "is not an .h5ad, a 10x .h5 file or a 10x matrix folder"]),
}
GOOD = {
    # a byte-order mark, comments, quoted fields with the separator inside, relative and absolute
    # paths, a 10x folder, covariate columns
    "good.csv": ('\ufeff# made by hand\nsample,counts,batch\n"s1",s1.h5ad,"b,1"\ns2,{abs}/tenx.h5,b2\n'
                 's3,tenx_dir,b3\n'),
    "good.tsv": ("sample\tcounts\tdonor\ns1\ts1.h5ad\td1\n"),
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory, nxf_home):
    folder = tmp_path_factory.mktemp("sheets")
    (folder / "s1.h5ad").write_bytes(b"not read by the checks")
    (folder / "s1.txt").write_text("x")
    (folder / "tenx.h5").write_bytes(b"x")
    (folder / "tenx_dir").mkdir()
    (folder / "tenx_dir" / "matrix.mtx.gz").write_bytes(b"x")  # a 10x matrix folder, as the check requires
    paths = []
    for name, text in {**{k: v[0] for k, v in SHEETS.items()}, **GOOD}.items():
        (folder / name).write_text(text.replace("{abs}", str(folder)), encoding="utf-8")
        paths.append(folder / name)
    paths += [folder / "no_such_sheet.csv", folder / "tenx_dir"]
    result = nextflow(["run", str(REPO / "tests" / "nf" / "check_samplesheets.nf"),
                       "--sheets", ",".join(map(str, paths))], folder, nxf_home)
    assert result.returncode == 0, _explain(result)
    lines = {}
    for line in result.stdout.splitlines():
        if line.startswith("RESULT\t"):
            _, name, status, detail = line.split("\t", 3)
            lines[name] = (status, detail)
    assert len(lines) == len(paths), result.stdout
    return folder, lines


@pytest.mark.parametrize("name", sorted(SHEETS))
def test_each_samplesheet_check_gives_its_message(checked, name):
    folder, lines = checked
    status, message = lines[name]
    assert status == "ERROR", (name, status, message)
    assert message.startswith(f"Samplesheet {folder / name}"), message
    for fragment in SHEETS[name][1]:
        assert fragment in message, (fragment, message)
    assert "\n" not in message


def test_missing_sheet_and_folder_given_as_sheet(checked):
    folder, lines = checked
    assert lines["no_such_sheet.csv"][0] == "ERROR" and "file does not exist" in lines["no_such_sheet.csv"][1]
    assert lines["tenx_dir"][0] == "ERROR" and "is a folder" in lines["tenx_dir"][1]


def test_good_sheets_give_meta_and_resolved_paths(checked):
    folder, lines = checked
    status, rows = lines["good.csv"]
    assert status == "OK", rows
    assert rows.split(";") == [f"id=s1&batch=b,1@{folder / 's1.h5ad'}", f"id=s2&batch=b2@{folder / 'tenx.h5'}",
                               f"id=s3&batch=b3@{folder / 'tenx_dir'}"]
    status, rows = lines["good.tsv"]
    assert status == "OK" and rows == f"id=s1&donor=d1@{folder / 's1.h5ad'}", rows


def test_schema_input_states_the_input_rules():
    """assets/schema_input.json (the samplesheet's JSON schema, for nf-schema and for readers) repeats
    the rules of src/cellassign_nf/input_rules.json, which the Groovy check reads: they agree."""
    rules = json.loads((REPO / "src" / "cellassign_nf" / "input_rules.json").read_text())
    items = json.loads((REPO / "assets" / "schema_input.json").read_text())["items"]
    sample = items["properties"]["sample"]
    assert sample["pattern"] == f"^{rules['sample_name_pattern']}$"
    assert sample["not"]["enum"] == rules["reserved_sample_names"]
    assert rules["sample_name_characters"] in sample["description"]
    assert items["required"] == rules["samplesheet_required_columns"]
    assert list(items["patternProperties"]) == [f"^{rules['column_name_pattern']}$"]
    extensions = re.findall(r"\\(\.\w+)", items["properties"]["counts"]["pattern"])
    assert extensions == rules["counts_file_extensions"], extensions


# --- nextflow config of every profile --------------------------------------------------------------

def _profiles() -> list[str]:
    text = (REPO / "nextflow.config").read_text()
    block = text[text.index("profiles {"):]
    return re.findall(r"^    (\w+)\s*\{", block, re.M)


# what each profile alone must resolve to (keys of `nextflow config -o flat`)
PROFILE_EXPECTS: dict[str, dict[str, str]] = {
    "debug": {"dumpHashes": "true", "cleanup": "false", "process.beforeScript": "'echo $HOSTNAME'"},
    "test": {"params.max_epochs": "60", "params.skip_umap": "true", "params.max_cpus": "2"},
    "docker": {"docker.enabled": "true", "singularity.enabled": "false", "apptainer.enabled": "false",
               "docker.runOptions": "'-u $(id -u):$(id -g)'"},
    "singularity": {"singularity.enabled": "true", "singularity.autoMounts": "true", "docker.enabled": "false",
                    "apptainer.enabled": "false"},
    "apptainer": {"apptainer.enabled": "true", "apptainer.autoMounts": "true", "docker.enabled": "false",
                  "singularity.enabled": "false"},
    "gpu": {"params.device": "'cuda'", "process.'withLabel:process_gpu'.accelerator": "1"},
    "awsbatch": {"process.executor": "'awsbatch'", "process.queue": "'cellassign-cpu'"},
    # added to awsbatch for the local emulator (tests/test_aws.py runs it): nothing of AWS's own
    "local_aws": {"aws.client.s3PathStyleAccess": "true", "executor.$awsbatch.pollInterval": "'2 sec'",
                  "params.max_memory": "'6.GB'"},
    "slurm": {"process.executor": "'slurm'", "params.gpu_queue": "'gpu'", "executor.$slurm.queueSize": "50",
              "executor.$slurm.submitRateLimit": "'20/1min'"},
}


def test_every_profile_has_expectations():
    assert set(_profiles()) == set(PROFILE_EXPECTS), "add the new profile's expected settings to PROFILE_EXPECTS"


@pytest.mark.parametrize("profile", sorted(PROFILE_EXPECTS))
def test_nextflow_config_of_each_profile(tmp_path, nxf_home, profile):
    config = _flat_config(profile, tmp_path, nxf_home)
    for key, value in PROFILE_EXPECTS[profile].items():
        assert config.get(key) == value, (profile, key, config.get(key))
    # every profile keeps the pipeline's own defaults it does not set
    assert config["manifest.name"] == "'cellassign-nf'"
    assert config["process.container"] == "'cellassign-nf:0.1.0'"
    if profile not in ("test", "gpu"):
        assert config["params.max_epochs"] == "400" and config["params.device"] == "'auto'"


def test_nextflow_config_without_profile_has_the_documented_defaults(tmp_path, nxf_home):
    result = nextflow(["config", str(REPO), "-o", "flat"], tmp_path, nxf_home)
    assert result.returncode == 0, _explain(result)
    config = dict(re.findall(r"^([A-Za-z0-9_.'$:-]+) = (.*)$", result.stdout, re.M))
    assert config["params.max_epochs"] == "400" and config["params.n_restarts"] == "3"
    assert config["params.skip_umap"] == "false" and config["params.min_delta"] == "2"
    assert not any(k.endswith(".enabled") and k.split(".")[0] in ("docker", "singularity", "apptainer")
                   and config[k] == "true" for k in config)
