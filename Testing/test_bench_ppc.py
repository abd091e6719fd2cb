"""The point-to-plane benchmark script's per-CT bookkeeping: --ct, its camera, the rows file, the report.

No registration runs here: the rows are made up, so the report's numbers can be checked exactly.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_ppc", BENCH / "bench_ppc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ct_option_and_camera(bench):
    assert bench.parse_args([]).ct == "chest"
    assert bench.parse_args(["--ct", "spine"]).ct == "spine"
    with pytest.raises(SystemExit):
        bench.parse_args(["--ct", "knee"])
    assert set(bench.CTS) == {"chest", "abdomen", "spine", "lung"}
    spine, abdomen = bench.ct_camera("spine"), bench.ct_camera("abdomen")
    assert (spine.col_spacing, spine.row_spacing, spine.cols, spine.sdd) == (1.5, 1.5, 128, 1020.0)
    assert (abdomen.col_spacing, abdomen.rows) == (4.0, 128)


def test_single_ct_rows_file_is_read_as_the_chest(bench, tmp_path):
    old = {"runs": [{"methods": ["dppc"]}], "rows": {"dppc": [{"mrpd": 1.0}]}}
    (tmp_path / "r.json").write_text(json.dumps(old))
    store = bench.load_store(tmp_path / "r.json")
    assert store == {"cts": {"chest": old}}
    store = bench.update_store(tmp_path / "r.json", lambda s: bench.ct_entry(s, "spine")["rows"].update(ppc=[]))
    again = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert again == store and again["cts"]["chest"] == old and again["cts"]["spine"]["rows"] == {"ppc": []}
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]  # no lock or temporary file left


def test_training_record_from_log(bench, tmp_path):
    log = tmp_path / "t.log"
    log.write_text(" 19:50:00 up 5:00,  0 user,  load average: 2.50, 1.00, 0.50\n"
                   "PROGRESS 0.01 step 1 loss 10.5 val 8.92 deg 38.3 mm range 24%\n"
                   "PROGRESS 0.50 step 200 loss 5.0 val 7.00 deg 20.0 mm range 50%\n"
                   "trained 460 steps in 900.6 s: validation error 6.35 deg, 11.0 mm\n"
                   " 20:05:00 up 5:15,  0 user,  load average: 4.00, 3.00, 2.00\nwall_s 912\n")
    rec = bench.training_record(log)
    assert (rec["steps"], rec["train_time_s"], rec["val_final"], rec["val_first"]) == (460, 900.6, [6.35, 11.0],
                                                                                         [1, 8.92, 38.3])
    assert (rec["load_start"][0], rec["load_end"][0], rec["wall_s"]) == (2.5, 4.0, 912.0)
    log.write_text("PROGRESS 0.5 step 3 loss 1 val 1 deg 1 mm\n")
    with pytest.raises(SystemExit, match="t.log"):
        bench.training_record(log)


def rows(mrpd: float, ok_below_mm: float, time_s: float) -> list[dict]:
    """One case per 5 mm bin of 0-60 mm; mRPD ``mrpd`` below ``ok_below_mm`` initial mTRE, else 10 mm."""
    out = []
    for k in range(12):
        init = 5.0 * k + 2.5
        r = mrpd if init < ok_below_mm else 10.0
        out.append({"initial_mtre": init, "mrpd": r, "mtre": 3 * r, "success_mtre": r < 0.6, "time_s": time_s,
                    "depth_error_mm": -2.5 if 0.6 <= r < 2.0 else 0.1})
    return out


def test_report_has_a_section_per_ct_with_the_targets(bench, tmp_path):
    train = {"log": "/x/t.log", "steps": 460, "train_time_s": 899.0, "val_final": [6.35, 11.0],
             "val_first": [1, 8.9, 38.3], "load_start": [2.5, 1, 1], "load_end": [4.0, 1, 1], "wall_s": 912.0}
    store = {"cts": {"spine": {"runs": [], "rows": {"ppc": rows(1.0, 20.0, 1.2), "ppc-opt": rows(0.3, 99.0, 3.5)},
                               "training": train},
                     "chest": {"runs": [], "rows": {"ppc": [{**r, "cpu_s": 0.8} for r in rows(0.2, 99.0, 0.9)]}}}}
    bench.write_report(tmp_path, store)
    md = (tmp_path / "ppc.md").read_text(encoding="utf-8")
    assert md.index("## Chest CT") < md.index("## Spine CT") and "## Abdomen CT" not in md
    top = md[:md.index("## Chest CT")]
    assert "| spine | ppc-opt | 12 | 60 / 60 | 0.30 | 100 % | - | 3.50 | 899 |" in top
    assert "| chest | ppc | 12 | 60 / 60 | 0.20 | 100 % | 0.80 | 0.90 | - |" in top
    assert (tmp_path / "ppc_success_vs_mtre_chest.png").is_file()
    assert (tmp_path / "ppc_success_vs_mtre_spine.png").is_file()
    spine = md[md.index("## Spine CT"):md.index("## Notes")]
    assert "pixels of 1.5 mm" in spine
    assert "| capture range >= 60 mm at 95 % (ppc) | 20 mm at mRPD < 2 mm, 0 mm at mTRE < 2 mm | **no**" in spine
    assert "| capture range >= 60 mm at 95 % (ppc-opt) | 60 mm at mRPD < 2 mm, 60 mm at mTRE < 2 mm | **yes**" in spine
    assert "(ppc-opt) | 0.30 mm | **yes** |" in spine
    assert "(ppc-opt, median wall time) | 3.50 s | **no** |" in spine
    # the shell's wall time around the command (912 s) is over the 15 minutes even where the command's clock is not
    assert "| 899.0 s by the command's clock, 460 steps; 912.0 s of wall time in the shell around the command | " \
           "**no** |" in spine
    assert "ppc 4 (|depth error| 2.5 mm, mRPD <= 1.00 mm)" in spine
    assert "ppc 9 / 12 closer, 0 over 100 mm; ppc-opt 12 / 12 closer, 0 over 100 mm" in spine
    chest = md[md.index("## Chest CT"):md.index("## Spine CT")]
    assert "| training < 15 min | - | not measured |" in chest
    assert "(ppc, median CPU time of one thread; shared-machine wall time 0.90 s) | 0.80 s | **yes** |" in chest
    assert "| 0.90 / 0.90 | 0.80 | 0 |" in chest and "| 3.50 / 3.50 | - | 0 |" in spine


def test_cpu_time_of_each_call(bench):
    cpu: list[float] = []
    fn = bench.with_cpu_time(lambda n: sum(i * i for i in range(n)), cpu)
    assert fn(200_000) == sum(i * i for i in range(200_000))
    with pytest.raises(TypeError):
        fn("x")
    assert len(cpu) == 2 and cpu[0] > 0.0 and all(c >= 0.0 for c in cpu)


def test_training_target_holds_when_the_command_and_its_shell_stay_under_15_minutes(bench):
    train = {"steps": 2000, "train_time_s": 897.5, "wall_s": 899.1}
    lines = bench.target_lines({}, train)
    assert lines[-1] == ("| training < 15 min | 897.5 s by the command's clock, 2000 steps; 899.1 s of wall time in "
                         "the shell around the command | **yes** |")
