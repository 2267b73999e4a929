"""The reference checkpoints through the `viper` CLI on any backend, checked by the reference's own checker.

For every case of every reference directory given, runs
`viper generate --backend B --model DIR [--image IMG] --prompt Q --max-new-tokens 16 --ignore-eos --json …`
(16 greedy ids with eos ignored, as the reference generated them), gathers the outputs into the candidate
JSON that `check_candidate.py` reads, and runs it. This is how the CUDA backend is checked on the GPU
machine (the Rust parity tests run on NdArray and wgpu); see examples/README.md.

Usage: python3 examples/e2e/parity.py --viper BIN --backend cuda [--dtype f32] REF_DIR...
Exit status 0 only when every case of every directory passes.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKER = os.path.join(HERE, "..", "..", "tests", "fixtures", "reference", "check_candidate.py")


def run_dir(viper, backend, dtype, ref, work):
    meta = json.load(open(os.path.join(ref, "reference.json")))
    cases = {}
    for case in meta["cases"]:
        out = os.path.join(work, f"{os.path.basename(ref)}-{case['name']}.json")
        cmd = [viper, "generate", "--backend", backend, "--model", ref, "--prompt", case["question"],
               "--max-new-tokens", "16", "--ignore-eos", "--json", out]
        if dtype:
            cmd += ["--dtype", dtype]
        if case.get("image"):
            cmd += ["--image", os.path.join(ref, case["image"])]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{ref} {case['name']}: viper failed: {r.stderr.strip()[-2000:]}", flush=True)
            return False
        got = json.load(open(out))
        cases[case["name"]] = {k: got[k] for k in ("generated_ids", "last_logits", "input_ids", "inputs_embeds_len")}
    candidate = os.path.join(work, f"{os.path.basename(ref)}-candidate.json")
    json.dump({"cases": cases}, open(candidate, "w"))
    r = subprocess.run([sys.executable, CHECKER, ref, candidate], capture_output=True, text=True)
    print(r.stdout.strip(), flush=True)
    if r.returncode != 0:
        print(r.stderr.strip(), flush=True)
    return r.returncode == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--viper", required=True)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("refs", nargs="+")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        ok = [run_dir(a.viper, a.backend, a.dtype, ref, work) for ref in a.refs]
    print(json.dumps({"what": "parity", "backend": a.backend, "dtype": a.dtype,
                      "dirs": dict(zip(a.refs, ok))}), flush=True)
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
