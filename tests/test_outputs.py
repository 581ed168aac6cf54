"""Outputs never destroy what modcircuit did not write (modcircuit.outputs), through the real CLI in-process:
an existing target is refused unless --overwrite, --overwrite replaces only our own outputs, `.`/parents/
$HOME are never outputs, unwritable locations fail before any work, and killed writers' temporaries are
swept by the next writer of the same target while a live writer's are kept."""
import json
import os
import subprocess
import sys

import pytest

import modcircuit as mc
from modcircuit.cli import main
from modcircuit.errors import ModcircuitError


def tree(root):
    """Every path under root (hidden ones too) with the bytes of each file."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_error_line(capsys, needle):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    return lines[0]


def refused(capsys, root, argv, needle):
    """argv exits 2 with one error line containing needle and leaves root exactly as it was."""
    before = tree(root)
    assert main(argv) == 2
    line = one_error_line(capsys, needle)
    assert tree(root) == before
    return line


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs-run") / "moons"
    mc.train("two-moons", "bimt", seed=0, steps=20).save(d)
    return d


@pytest.fixture()
def no_training(monkeypatch):
    """Training fails the test: every refusal must come before it."""
    def boom(*a, **k):
        raise AssertionError("training started before the output was checked")
    monkeypatch.setattr(sys.modules["modcircuit.train"], "train", boom)


TRAIN = ["train", "--task", "two-moons", "--steps", "5", "--no-progress"]


# ---- train -------------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_train_keeps_a_user_folder(tmp_path, capsys, no_training, overwrite):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("notes")
    needle = "is not a checkpoint folder written by modcircuit (it holds 'notes.txt'" if overwrite else \
        "already exists; pass --overwrite"
    refused(capsys, tmp_path, [*TRAIN, "--out", str(tmp_path / "precious"), *overwrite], needle)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "notes"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_train_keeps_an_ordinary_file(tmp_path, capsys, no_training, overwrite):
    (tmp_path / "afile").write_text("mine")
    refused(capsys, tmp_path, [*TRAIN, "--out", str(tmp_path / "afile"), *overwrite], "is a file; a folder is needed")


@pytest.mark.parametrize("target, where", [(".", "the current folder"), ("..", "a folder above the current"),
                                           ("ABOVE", "a folder above the current"), ("HOME", "your home folder"),
                                           ("/", "the root folder")])
def test_cwd_its_parents_home_and_root_are_never_outputs(tmp_path, capsys, monkeypatch, no_training, target, where):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("x")
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = {"ABOVE": str(tmp_path / "a"), "HOME": str(tmp_path / "home")}.get(target, target)
    refused(capsys, tmp_path, [*TRAIN, "--out", path, "--overwrite"], where)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (not writable, even by root)")
def test_unwritable_location_fails_before_training(tmp_path, capsys, no_training):
    refused(capsys, tmp_path, [*TRAIN, "--out", "/proc/modcircuit-nowhere/run"], "is not writable")
    (tmp_path / "afile").write_text("x")  # a file where a folder would have to be created
    refused(capsys, tmp_path, [*TRAIN, "--out", str(tmp_path / "afile" / "run")], "is a file, not a folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_fails_before_training(tmp_path, capsys, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused(capsys, tmp_path, [*TRAIN, "--out", str(ro / "x" / "run")], "is not writable")
    finally:
        ro.chmod(0o755)


def test_train_overwrite_replaces_its_own_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    refused(capsys, tmp_path, [*TRAIN, "--out", str(out), "--seed", "3"], "already exists; pass --overwrite")
    assert main([*TRAIN, "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    assert mc.load(out).seed == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporaries left
    # a file added to our checkpoint folder makes it the user's again
    (out / "notes.txt").write_text("mine")
    refused(capsys, tmp_path, [*TRAIN, "--out", str(out), "--overwrite"], "it holds 'notes.txt'")


def test_an_empty_folder_is_written_into(tmp_path):
    (tmp_path / "new").mkdir()
    assert main([*TRAIN, "--out", str(tmp_path / "new")]) == 0
    assert mc.load(tmp_path / "new").task_name == "two-moons"


def test_python_api_refuses_unless_overwrite(tmp_path, run_dir):
    run = mc.load(run_dir)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "x.txt").write_text("x")
    with pytest.raises(ModcircuitError, match="already exists"):
        run.save(tmp_path / "user")
    with pytest.raises(ModcircuitError, match="not a checkpoint folder written by modcircuit"):
        run.save(tmp_path / "user", overwrite=True)
    assert (tmp_path / "user" / "x.txt").read_text() == "x"


# ---- discover, draw ----------------------------------------------------------------------------
def test_discover_refuses_user_files_and_folders_and_replaces_its_own(tmp_path, capsys, run_dir):
    disc = ["discover", str(run_dir), "--method", "magnitude", "--top-k", "10", "--json"]
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    (tmp_path / "adir").mkdir()
    refused(capsys, tmp_path, [*disc, "--out", str(tmp_path / "notes.json")], "already exists")
    refused(capsys, tmp_path, [*disc, "--out", str(tmp_path / "notes.json"), "--overwrite"],
            "not a circuit file written by modcircuit")
    refused(capsys, tmp_path, [*disc, "--out", str(tmp_path / "adir"), "--overwrite"], "is a folder; a file is needed")
    out = tmp_path / "c.json"
    assert main([*disc, "--out", str(out)]) == 0
    refused(capsys, tmp_path, [*disc, "--out", str(out)], "already exists; pass --overwrite")
    assert main([*disc[:-2], "20", "--json", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["n_kept"] == 20


def test_draw_refuses_a_user_figure_and_replaces_its_own(tmp_path, capsys, run_dir):
    user = tmp_path / "photo.png"
    user.write_bytes(b"\x89PNG\r\n\x1a\n a user's picture")
    refused(capsys, tmp_path, ["draw", str(run_dir), "-o", str(user)], "already exists")
    refused(capsys, tmp_path, ["draw", str(run_dir), "-o", str(user), "--overwrite"],
            "not a figure written by modcircuit")
    for name in ("net.png", "net.svg", "net.pdf", "net.html"):
        out = tmp_path / name
        assert main(["draw", str(run_dir), "-o", str(out)]) == 0
        first = out.read_bytes()
        refused(capsys, tmp_path, ["draw", str(run_dir), "-o", str(out)], "already exists")
        assert main(["draw", str(run_dir), "-o", str(out), "--overwrite", "--title", "again"]) == 0
        assert out.read_bytes() != first


# ---- report, study -----------------------------------------------------------------------------
@pytest.fixture()
def results(tmp_path):
    from test_report import synthetic_results

    return synthetic_results(tmp_path / "r.duckdb", 0.1, 0.5, seeds=2)


def test_report_keeps_a_user_folder_and_replaces_its_own(tmp_path, capsys, results):
    mine = tmp_path / "myreport"
    mine.mkdir()
    (mine / "thesis.tex").write_text("chapter 1")
    refused(capsys, tmp_path, ["report", str(results), "-o", str(mine), "--no-figures"], "already exists")
    refused(capsys, tmp_path, ["report", str(results), "-o", str(mine), "--no-figures", "--overwrite"],
            "not a report folder written by modcircuit")
    assert (mine / "thesis.tex").read_text() == "chapter 1"
    ours = tmp_path / "rep"
    assert main(["report", str(results), "-o", str(ours), "--no-figures", "--json"]) == 0
    refused(capsys, tmp_path, ["report", str(results), "-o", str(ours), "--no-figures"], "already exists")
    assert main(["report", str(results), "-o", str(ours), "--no-figures", "--overwrite", "--title", "T2"]) == 0
    assert "T2" in (ours / "report.md").read_text()
    (ours / "figures" / "thesis.tex").write_text("added by hand")  # our folder with a user's file in it
    refused(capsys, tmp_path, ["report", str(results), "-o", str(ours), "--no-figures", "--overwrite"],
            "it holds 'figures/thesis.tex'")


def test_study_refuses_a_user_report_folder_and_an_unwritable_results_file_before_training(
        tmp_path, capsys, no_training, monkeypatch):
    import modcircuit.study.cells as cells

    monkeypatch.setattr(cells, "run_unit", lambda u: (_ for _ in ()).throw(AssertionError("ran")))
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\ntasks = ["two-moons"]\nregimes = ["vanilla"]\nseeds = [0]\nmethods = ["magnitude"]\n'
                    f'results = "{tmp_path / "r.duckdb"}"\n[train]\nsteps = 5\n[profile]\nenabled = false\n')
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "thesis.tex").write_text("x")
    refused(capsys, tmp_path, ["study", "run", str(spec), "--report", str(tmp_path / "rep"), "--overwrite"],
            "not a report folder written by modcircuit")
    if os.path.isdir("/proc/self"):
        refused(capsys, tmp_path, ["study", "run", str(spec), "--results", "/proc/modcircuit-nowhere/r.duckdb"],
                "is not writable")


# ---- leftovers of killed writers ---------------------------------------------------------------
def _plant_leftovers(target):
    """A dead writer's temporary and set-aside copy, and a live writer's temporary, next to target."""
    dead, live = dead_pid(), os.getpid()
    made = {"dead_tmp": target.parent / f".{target.name}.tmp-{dead}-abc",
            "dead_old": target.parent / f".{target.name}.old-{dead}-xyz",
            "live_tmp": target.parent / f".{target.name}.tmp-{live}-def"}
    for p in made.values():
        p.mkdir(parents=True)
        (p / "model.json").write_text("{")  # half-written
    return made


@pytest.mark.parametrize("writer", ["train", "discover", "draw", "report"])
def test_each_writer_sweeps_dead_writers_leftovers_and_keeps_live_ones(tmp_path, run_dir, writer):
    if writer == "report":
        from test_report import synthetic_results

        res = synthetic_results(tmp_path / "r.duckdb", 0.1, 0.5, seeds=2)
    target = tmp_path / {"train": "run", "discover": "c.json", "draw": "net.png", "report": "rep"}[writer]
    made = _plant_leftovers(target)
    argv = {"train": [*TRAIN, "--out", str(target)],
            "discover": ["discover", str(run_dir), "--method", "magnitude", "--top-k", "5", "--out", str(target)],
            "draw": ["draw", str(run_dir), "-o", str(target)],
            "report": ["report", str(tmp_path / "r.duckdb"), "-o", str(target), "--no-figures"]}[writer]
    assert main(argv) == 0
    assert target.exists()
    assert not made["dead_tmp"].exists() and not made["dead_old"].exists()
    assert made["live_tmp"].exists()
    if writer == "report":
        assert res.exists()
