"""Exported EPI and spiral files re-read by parsers the project does not ship: k at every ADC sample.

    .venv/bin/python bench/seq_reread_bench.py [--protocol protocols/epi.yaml protocols/spiral.yaml]
                                               [--system prisma]

Each protocol is built and exported by mrbridge (``export_seq``, the file's timing kept in the returned
Sequence). The .seq is then read in a separate process inside ``bench/.mrzero-venv`` (made by
bench/engine_bench.py) by MRzero-Core's ``Sequence.import_file`` with each of its two Rust parsers,
``pydisseqt`` and ``pulseq_rs`` (neither is pypulseq, which mrbridge itself uses), and k at every ADC sample
(``get_kspace``, the cumulative gradient moments) is compared with mrbridge's model k of the exported sequence:
the largest |Δk| per axis in k steps (1/FOV), the sample counts, and pypulseq's ``calculate_kspace`` for
comparison. MRzero-Core is AGPL: it runs only there, as a black box; mrbridge never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("pydisseqt", "pulseq_rs")


def reread(seq_path: str, case: str) -> dict[str, object]:
    """Inside bench/.mrzero-venv: each parser's k at the ADC samples against the model's (``case`` npz)."""
    import MRzeroCore as mr0

    data = np.load(case)
    model, fov = data["k"], data["fov"]
    out: dict[str, object] = {}
    for backend in BACKENDS:
        try:
            seq = mr0.Sequence.import_file(seq_path, backend=backend)
        except Exception as e:  # a parser that refuses the file is a result too
            out[backend] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        k = seq.get_kspace()[:, :3].double().numpy()
        if k.shape != model.shape:
            out[backend] = {"error": f"{k.shape[0]} ADC samples, the model has {model.shape[0]}"}
            continue
        err = np.abs(k - model).max(0) * fov
        out[backend] = {"samples": int(k.shape[0]), "max_dk_steps": [float(e) for e in err]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", nargs="+", default=["protocols/epi.yaml", "protocols/spiral.yaml"])
    parser.add_argument("--system", default="prisma")
    parser.add_argument("--reread", nargs=2, metavar=("SEQ", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reread:
        print(json.dumps(reread(*args.reread)))
        return

    import warnings

    import pypulseq as pp
    import torch
    from engine_bench import mrzero_python

    from mrbridge.sequence.export import export_seq
    from mrbridge.sequence.model import Sequence
    from mrbridge.system import System

    system = System.load(args.system)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in args.protocol:
            seq = Sequence.from_protocol(ROOT / protocol)
            path = Path(tmp) / (Path(protocol).stem + ".seq")
            played = export_seq(seq, system, path=path).sequence.to(dtype=torch.float64)
            old = path.with_suffix(".v14.seq")  # pydisseqt reads format 1.4 only
            export_seq(seq, system, path=old, version="1.4")
            model = played.kspace().numpy()
            fov = np.asarray(played.info.fov)
            case = Path(tmp) / "case.npz"
            np.savez(case, k=model, fov=fov)
            back = pp.Sequence()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                back.read(str(path))
            k_pp = back.calculate_kspace()[0].T
            pp_err = np.abs(k_pp - model).max(0) * fov
            print(f"{protocol}: {model.shape[0]} ADC samples, {args.system}")
            shown = np.array2string(pp_err, precision=2)
            print(f"  pypulseq calculate_kspace      max |Δk| (x, y, z) = {shown} k steps")
            for version, file in (("1.5", path), ("1.4", old)):
                done = subprocess.run([str(mrzero_python()), __file__, "--reread", str(file), str(case)],
                                      capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    print(f"  MRzero-Core re-read of v{version} failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                for backend, result in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    name = f"{backend} (v{version})"
                    if "error" in result:
                        print(f"  {name:<30} refused: {result['error']}")
                    else:
                        err = np.asarray(result["max_dk_steps"])
                        print(f"  {name:<30} max |Δk| (x, y, z) = {np.array2string(err, precision=2)} k steps")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
