"""``attnbench spectrum``."""
from __future__ import annotations

from attnbench.spectrum import spectrum_command

def _cmd(args, console) -> int:
    return spectrum_command(args.out, windows=args.windows, n=args.n, device=args.device,
                            cache=args.cache)


def add_cli(sub) -> None:
    p = sub.add_parser("spectrum", help="singular-value spectrum of real attention (Linformer Fig. 1)")
    p.add_argument("out", help="directory for the table, curves and plots")
    p.add_argument("--windows", type=int, default=32, help="512-token windows of real text")
    p.add_argument("--n", type=int, default=512, help="tokens per window (<= 512)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu or cuda (default cpu)")
    p.add_argument("--cache", choices=["read", "use", "off"], default="read",
                   help="captured tensors on disk: read if there (default), read and fill, or ignore")
    p.set_defaults(func=_cmd)
