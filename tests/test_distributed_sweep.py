"""A sweep split across machines: `--shard 0/2` and `--shard 1/2`, merged by the fit's reader,
give the rows of the unsplit sweep; the split keeps whole trunks and balances tokens."""

from __future__ import annotations

import pytest
import yaml
from test_train_fixtures import tiny_data_dir  # noqa: F401

from mlx_qat.cli.sweep import main as sweep_main
from mlx_qat.fit.results import read_results
from mlx_qat.sweep import Shard, load_sweep, plan_trunks, read_rows, run_sweep
from mlx_qat.sweep.shard import assign

TPS = 4 * 32
TIMING = ("wall_s", "tokens_per_s")  # what two trainings of one run may differ in


def write_sweep(tmp_path, data_dir, out, tokens=(8 * TPS, 12 * TPS), fractions=(0.5,)) -> str:
    doc = {
        "out": str(out),
        "data": str(data_dir),
        "train": {
            "batch_size": 4, "seq_len": 32, "warmup_steps": 2, "lr": 3e-3,
            "eval_every": 0, "eval_batches": 2, "final_eval_batches": 2, "save_every": 0,
            "cache_limit_mb": 256,
        },
        "grids": [{"name": "main", "models": ["d2"], "tokens": list(tokens), "bits": [4],
                   "fractions": list(fractions)}],
    }  # fmt: skip
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _strip(rows):
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in rows), key=str)


def test_two_shards_merged_by_the_fit_reader_give_the_unsplit_rows(tiny_data_dir, tmp_path):  # noqa: F811
    whole = run_sweep(load_sweep(write_sweep(tmp_path, tiny_data_dir, tmp_path / "whole")))
    out = tmp_path / "split"
    path = write_sweep(tmp_path, tiny_data_dir, out)
    for i in (0, 1):
        assert sweep_main([path, "--shard", f"{i}/2", "--quiet"]) == 0
    files = sorted(out.rglob("results.jsonl"))
    assert [f.parent.name for f in files] == ["shard-0-of-2", "shard-1-of-2"]
    assert not (out / "results.jsonl").exists()
    # each shard got one whole trunk (its trunk run and the branch)
    assert [len(read_rows(f)) for f in files] == [2, 2]
    merged = read_results([out])
    assert len(whole) == 4 and _strip(merged.rows) == _strip(whole)
    # a shard re-run trains nothing and appends nothing
    assert run_sweep(load_sweep(path), shard=Shard(1, 2)) == read_rows(files[1])


def test_shards_keep_whole_trunks_balanced_by_tokens_and_deterministic(tiny_data_dir, tmp_path):  # noqa: F811
    sweep = load_sweep(
        write_sweep(
            tmp_path, tiny_data_dir, tmp_path / "plan",
            tokens=[8 * TPS, 12 * TPS, 16 * TPS, 24 * TPS, 32 * TPS], fractions=[0.25, 0.5],
        )
    )  # fmt: skip
    trunks = plan_trunks(sweep)
    cost = [t.tokens_trained() for t in trunks]
    for n in (1, 2, 3, 7):
        owner = assign(trunks, n)
        assert owner == assign(plan_trunks(sweep), n)  # the same on every machine
        picked = [Shard(i, n).select(trunks) for i in range(n)]
        assert sorted(id(t) for p in picked for t in p) == sorted(id(t) for t in trunks)
        loads = [sum(t.tokens_trained() for t in p) for p in picked]
        # greedy largest-first: no shard exceeds another by more than the largest trunk
        assert max(loads) - min(loads) <= max(cost)
    assert [len(p) for p in (Shard(i, 7).select(trunks) for i in range(7))].count(0) == 2


def test_a_shard_without_a_trunk_is_refused_and_surplus_shards_are_named(
    tiny_data_dir,  # noqa: F811
    tmp_path,
    capsys,
):
    """--shard 5/10 on a sweep of 2 trunks would write no row: refused before anything is
    written, naming the shard count that fits; --shard 1/3 runs, warning that one shard idles."""
    out = tmp_path / "sweep"
    path = write_sweep(tmp_path, tiny_data_dir, out)  # 2 trunks
    assert sweep_main([path, "--shard", "5/10"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mlx_qat.sweep: error: --shard 5/10: this sweep has 2 trunk(s)")
    assert err.endswith("split it into at most 2 shard(s) (--shard I/2)") and not out.exists()
    assert sweep_main([path, "--shard", "1/3", "--dry-run"]) == 0
    assert (
        "--shard 1/3: this sweep has only 2 trunk(s), so 1 of the 3 shards get no run; "
        "--shard I/2 uses every machine" in capsys.readouterr().err
    )


@pytest.mark.parametrize("bad", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_a_bad_shard_is_refused_naming_the_flag(bad):
    with pytest.raises(ValueError, match="--shard"):
        Shard.parse(bad)
