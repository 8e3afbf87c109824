"""Pair tables: our time over a peer's, cell by cell, in both timing modes."""
import pandas as pd
import pytest

from attnbench.cli import BadInput
from attnbench.pairs import pair_table, parse_pairs


def rows():
    base = dict(status="ok", heads=8, head_dim=64, dtype="fp16", mode="fwd", level="layer",
                causal=False, batching="fixed", batch=1)
    out = []
    for n, ours, peer in ((1024, (1.0, 0.1), (2.0, 0.4)), (4096, (3.0, 0.6), (4.0, 0.6))):
        out.append(dict(base, method="mine", label="mine(k=2)", n=n, eager_time_ms=ours[0],
                        time_ms=ours[1], timing_mode="cuda-graph"))
        out.append(dict(base, method="peer_mine", label="peer_mine(k=2)", n=n, eager_time_ms=peer[0],
                        time_ms=peer[1], timing_mode="cuda-graph"))
        # a peer that cannot be captured: time_ms is its eager time
        out.append(dict(base, method="peer_eager", label="peer_eager", n=n, eager_time_ms=peer[0],
                        time_ms=peer[0], timing_mode="eager"))
        # another dtype must not be matched with the fp16 rows
        out.append(dict(base, method="peer_mine", label="peer_mine(k=2)", n=n, dtype="fp32",
                        eager_time_ms=100.0, time_ms=100.0, timing_mode="cuda-graph"))
    return pd.DataFrame(out)


def test_ratios_per_cell_in_both_modes_and_the_worst():
    headers, table = pair_table(rows(), [("mine", "peer_mine")])
    assert headers[3:] == ["n=1k B=1", "n=4k B=1", "worst"]
    assert len(table) == 1  # the fp32 peer rows have no fp16 partner
    assert table[0][3:] == ["0.50 / 0.25", "0.75 / 1.00", "1.00"]


def test_an_uncaptured_peer_uses_its_eager_time_and_is_marked():
    _, table = pair_table(rows(), [("mine", "peer_eager")])
    assert table[0][3] == "0.50 / 0.05*"  # 0.1 ms replay over the peer's 2.0 ms eager


def test_eager_ratios_from_widely_spread_samples_are_marked():
    """~ when ours at its third quartile over the peer's first is more than 1.5× ours at its first
    over the peer's third; no mark from tight samples, or without samples (older runs)."""
    df = rows()
    tight = [1.0, 1.0, 1.0, 1.0, 1.0]
    wide = [0.5, 0.6, 1.0, 1.4, 1.5]
    df["eager_samples_ms"] = [wide if m == "mine" and n == 1024 else tight
                              for m, n in zip(df["method"], df["n"])]
    _, table = pair_table(df, [("mine", "peer_mine")])
    assert table[0][3] == "0.50~ / 0.25" and table[0][4] == "0.75 / 1.00"
    _, plain = pair_table(rows(), [("mine", "peer_mine")])
    assert "~" not in "".join(plain[0])
    # a run without --cuda-graphs keeps its eager samples as time_samples_ms
    eager = rows().assign(timing_mode="eager", time_ms=lambda d: d["eager_time_ms"])
    eager["time_samples_ms"] = df["eager_samples_ms"]
    _, table = pair_table(eager, [("mine", "peer_mine")])
    assert table[0][3:] == ["0.50~", "0.75", "0.75"]  # eager only: no graph column


def test_bad_pairs_name_what_is_wrong():
    with pytest.raises(BadInput, match="not OURS=PEER"):
        parse_pairs("mine", {"mine", "peer_mine"})
    with pytest.raises(BadInput, match="'nope' is not a method of this run; it has: mine, peer_mine"):
        parse_pairs("nope=peer_mine", {"mine", "peer_mine"})


def test_the_pair_table_fits_80_columns_with_numbers_whole(tmp_path, capsys):
    import re
    from collections import Counter

    from rich.cells import cell_len
    from rich.console import Console

    from attnbench.cli import main
    from attnbench.pairs import render_pairs
    from test_report import make_run, row

    out = []
    for n in (256, 512, 1024, 2048, 4096, 8192):
        for batch in (1, 8):
            for method, t in (("linformer", 1.0), ("peer_linformer", 1.7)):
                out.append(row(method, n, time_ms=t * n / 1000, batch=batch, params={"k": 128},
                               cell_id=f"{method}-{n}-{batch}"))
    run = make_run(tmp_path / "run", out)

    def text(width):
        console = Console(width=width, record=True, file=open("/dev/null", "w"))
        render_pairs(run, "linformer=peer_linformer", console, tmp_path / "o")
        return console.export_text()

    narrow, wide = text(80), text(1000)
    assert max(cell_len(ln) for ln in narrow.splitlines()) <= 80
    count = lambda s: Counter(re.findall(r"\d+(?:\.\d+)?", s))  # noqa: E731
    assert not count(wide) - count(narrow)  # every ratio whole (blocks only repeat the keys)
    assert "0.59" in narrow and narrow.count("n=256 B=1") == 1
    target = tmp_path / "file"
    target.write_text("")
    assert main(["report", str(run), "--pairs", "linformer=peer_linformer", "--out", str(target)]) == 2
    assert "is a file" in " ".join(capsys.readouterr().err.split())
