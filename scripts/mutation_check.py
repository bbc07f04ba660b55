"""Mutation check: plant one small bug at a time in a copy of the repository and see whether the tests
named for it fail. Not part of CI; a full run takes minutes.

    python scripts/mutation_check.py              # every mutation, then a caught/survived table
    python scripts/mutation_check.py --list       # names, files, whether the snippet is found, tests
    python scripts/mutation_check.py --only NAME [--only NAME2]

Each entry of ``MUTATIONS`` is (name, file, exact original snippet, replacement, tests). The snippet
must occur exactly once in its file; if it is not there (the code moved), every other ``moe_jax``
file is searched for it, and a snippet found nowhere (or more than once) is reported as "stale":
update the entry, never drop it silently. The tests (pytest node ids, relative to the repository
root) run with ``pytest -x -q`` in the copy, under a timeout. Outcomes: caught (tests failed),
SURVIVED (tests passed: a test is missing), timeout (counted as caught), error (pytest could not
run them: a wrong node id), stale, no test (``--tests-from`` an older suite without the test file). A baseline run of all named tests on the unmutated copy comes
first (``--no-baseline`` skips it): a mutation is only meaningful against tests that pass.
Exit status 1 when any mutation survived or is stale, or the baseline failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info", ".pytest_cache",
                                     "shared", "*.pyc")


class Mutation(NamedTuple):
    name: str
    file: str  # relative to the repository root
    original: str  # exact snippet, must occur once
    replacement: str
    tests: tuple[str, ...]  # pytest node ids


PARITY = "tests/models/test_parity.py::test_logits_router_logits_and_choices_match"
M = Mutation
MUTATIONS: list[Mutation] = [
    # --- metrics (analysis)
    M("js_mixture_clamp", "moe_jax/analysis/metrics.py", "m = np.maximum(0.5 * (p + q), M_FLOOR)",
      "m = np.maximum(0.5 * (p + q), 1e-6)", ("tests/analysis/test_metrics.py",)),
    M("enjs_denominator_floor", "moe_jax/analysis/metrics.py", "DENOM_FLOOR = 1e-6", "DENOM_FLOOR = 1e-2",
      ("tests/analysis/test_metrics.py",)),
    M("enjs_sum_not_mean_entropy", "moe_jax/analysis/metrics.py", "h = 0.5 * (-xlogy(p, p).sum(-1) - xlogy(q, q).sum(-1))",
      "h = (-xlogy(p, p).sum(-1) - xlogy(q, q).sum(-1))", ("tests/analysis/test_metrics.py",)),
    M("kl_floor", "moe_jax/analysis/metrics.py", "return _kl(p, np.maximum(q, eps))", "return _kl(p, np.maximum(q, 1e-6))",
      ("tests/analysis/test_metrics.py",)),
    # --- positions, RoPE, LongRoPE
    M("default_positions_off_by_one", "moe_jax/models/decoder.py", "jnp.cumsum(attention_mask, axis=-1) - 1",
      "jnp.cumsum(attention_mask, axis=-1)", ("tests/models/test_longrope_boundary.py",)),
    M("longrope_regime_from_padded_length", "moe_jax/models/layers.py",
      "is_long = (jnp.max(positions) + 1) > lr.original_max_position_embeddings",
      "is_long = positions.shape[-1] > lr.original_max_position_embeddings", ("tests/models/test_longrope_boundary.py",)),
    M("longrope_always_short_mscale", "moe_jax/models/layers.py",
      "mscale = jnp.where(is_long, jnp.float32(lr.long_mscale), jnp.float32(lr.short_mscale))",
      "mscale = jnp.float32(lr.short_mscale)", ("tests/models/test_rope.py",)),
    M("rope_rotate_half_sign", "moe_jax/models/layers.py", "rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)",
      "rotated = jnp.concatenate([x[..., half:], -x[..., :half]], axis=-1)", ("tests/models/test_rope.py",)),
    # --- norms and attention
    M("rms_norm_without_eps", "moe_jax/models/layers.py", "jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)",
      "jnp.mean(xf * xf, axis=-1, keepdims=True))", (PARITY + "[olmoe]",)),
    M("layer_norm_without_bias", "moe_jax/models/layers.py",
      "(y * scale.astype(jnp.float32) + bias.astype(jnp.float32))", "(y * scale.astype(jnp.float32))",
      ("tests/models/test_longrope_boundary.py",)),
    M("attention_scale_from_hidden", "moe_jax/models/layers.py", "* (D ** -0.5)",
      "* ((cfg.hidden_size // cfg.num_heads) ** -0.5)", (PARITY + "[qwen3_moe]",)),
    M("clip_qkv_spares_v", "moe_jax/models/layers.py", "for t in (q, k, v))", "for t in (q, k)) + (v,)",
      (PARITY + "[olmoe]",)),
    # --- routing rules
    M("softmax_topk_never_renormalises", "moe_jax/models/routing.py", "    if renormalize:\n", "    if False:\n",
      ("tests/models/test_routing_rules.py",)),
    M("topk_of_logits_as_weights", "moe_jax/models/routing.py", "probs = jax.nn.softmax(z.astype(jnp.float32), axis=-1)",
      "probs = z.astype(jnp.float32)", ("tests/models/test_routing_rules.py",)),
    M("sparsemixer_threshold_eps", "moe_jax/models/routing.py", "drop = (threshold - ref) / factor > 2 * eps",
      "drop = (threshold - ref) / factor > eps", ("tests/models/test_routing_rules.py",)),
    M("sparsemixer_factor_without_threshold", "moe_jax/models/routing.py",
      "factor = jnp.maximum(jnp.abs(ref), threshold)", "factor = jnp.abs(ref)", ("tests/models/test_routing_rules.py",)),
    M("sparsemixer_in_fp32", "moe_jax/models/routing.py", "    s = z.astype(dtype)\n", "    s = z.astype(jnp.float32)\n",
      ("tests/models/test_routing_rules.py",)),
    M("shared_expert_gate_without_sigmoid", "moe_jax/models/decoder.py", 'jax.nn.sigmoid(x @ p["shared_gate"]["kernel"])',
      '(x @ p["shared_gate"]["kernel"])', (PARITY + "[qwen2_moe]",)),
    # --- interventions
    M("intervened_logits_returned", "moe_jax/models/decoder.py",
      "weights, idx = route(z if iv is None else iv_lib.apply(z, iv), cfg, x.dtype)",
      "z = z if iv is None else iv_lib.apply(z, iv)\n    weights, idx = route(z, cfg, x.dtype)",
      ("tests/models/test_intervention.py",)),
    M("intervention_sample_std", "moe_jax/models/intervention.py", "std = jnp.std(z, axis=-1, keepdims=True)",
      "std = jnp.std(z, axis=-1, keepdims=True, ddof=1)", ("tests/models/test_intervention.py",)),
    M("intervention_abs_scale_signed", "moe_jax/models/intervention.py", "iv.abs_scale * jnp.abs(z)",
      "iv.abs_scale * z", ("tests/models/test_intervention.py",)),
    M("intervention_force_without_margin", "moe_jax/models/intervention.py",
      "top + _FORCE_MARGIN * jnp.maximum(1.0, jnp.abs(top))", "top", ("tests/models/test_intervention.py",)),
    # --- expert dispatch
    M("dense_dispatch_ignores_weights", "moe_jax/models/experts.py", "cw = combine_weights(idx, w, ",
      "cw = combine_weights(idx, jnp.ones_like(w), ", ("tests/models/test_dispatch.py",)),
    M("grouped_rows_left_sorted", "moe_jax/models/experts.py",
      'return jnp.einsum("tkh,tk->th", rows[where].reshape(T, k, -1), w)',
      'return jnp.einsum("tkh,tk->th", rows.reshape(T, k, -1), w)', ("tests/models/test_dispatch.py",)),
    # --- config rules
    M("decoder_sparse_step_off_by_one", "moe_jax/models/config.py", "(i + 1) % step == 0", "i % step == 0",
      ("tests/models/test_parity.py::test_qwen2_moe_decoder_sparse_step_and_mlp_only_layers",)),
    M("mlp_only_layers_ignored", "moe_jax/models/config.py", "(i not in mlp_only) and ", "",
      ("tests/models/test_released_configs.py",)),
    M("head_dim_from_hidden", "moe_jax/models/config.py", 'head_dim = int(hf.get("head_dim") or hidden // n_heads)',
      "head_dim = hidden // n_heads", ("tests/models/test_released_configs.py",)),
    M("norm_topk_prob_family_default", "moe_jax/models/config.py",
      'norm_topk_prob=bool(hf.get("norm_topk_prob", fam.default_norm_topk_prob))',
      "norm_topk_prob=fam.default_norm_topk_prob", ("tests/models/test_released_configs.py",)),
    # --- on-device statistics, store, resume
    M("topk_freq_not_normalised", "moe_jax/routing/statistics.py",
      "seq_counts.astype(jnp.float32) / denom[None, :, None]", "seq_counts.astype(jnp.float32)",
      ("tests/routing/test_collect.py",)),
    M("router_outputs_always_returned", "moe_jax/models/decoder.py", "    if not return_router:\n",
      "    if False:\n", ("tests/routing/test_device_outputs.py", "tests/models/test_model_api.py")),
    M("resume_ignores_text_hash", "moe_jax/pipeline/collect.py",
      'summaries[lang].get("text_sha256") == input_hashes.get(lang)', "True", ("tests/pipeline/test_collect_resume.py",)),
    M("resume_ignores_file_damage", "moe_jax/io/integrity.py",
      "        why = problem(directory, name, units.layout, entries[name], units.redo.format(name=name))\n",
      "        why = None\n", ("tests/pipeline/test_collect_resume.py",)),
    M("resume_ignores_file_sha256", "moe_jax/io/integrity.py",
      "if layout.sha_key in entry and got[1] != entry[layout.sha_key]:", "if False:",
      ("tests/pipeline/test_collect_resume.py",)),
    # --- steering
    M("steering_negative_lambda_forces", "moe_jax/steering/spec.py", "FORCE if self.lam >= 0 else DEMOTE", "FORCE",
      ("tests/steering/test_spec.py",)),
    M("mcnemar_one_sided", "moe_jax/steering/paired.py", 'alternative="two-sided"', 'alternative="greater"',
      ("tests/steering/test_paired.py",)),
    M("bootstrap_alpha_not_halved", "moe_jax/steering/paired.py", "alpha = (1.0 - confidence) / 2",
      "alpha = 1.0 - confidence", ("tests/steering/test_paired.py",)),
    # --- evaluation: log-likelihood and generation scoring (lm-eval semantics)
    M("eval_log_softmax_wrong_axis", "moe_jax/eval/scoring.py",
      "logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)",
      "logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=1)", ("tests/eval/test_harness.py",)),
    M("eval_continuation_slice_off_by_one", "moe_jax/eval/scoring.py", "np.sum(next_lp[r, n - c:n - 1]",
      "np.sum(next_lp[r, n - c + 1:n - 1]", ("tests/eval/test_harness.py",)),
    M("eval_is_greedy_inverted", "moe_jax/eval/scoring.py", "is_greedy = bool(np.array_equal(greedy[r, n - c:n], cont))",
      "is_greedy = not np.array_equal(greedy[r, n - c:n], cont)", ("tests/eval/test_harness.py",)),
    M("eval_left_truncation_one_too_many", "moe_jax/eval/scoring.py", "inputs = [list(k[-max_length:]) for k in chunk]",
      "inputs = [list(k[-(max_length + 1):]) for k in chunk]", ("tests/eval/test_harness.py",)),
    M("eval_generation_truncation_one_too_many", "moe_jax/eval/harness.py", "enc = enc[-max_ctx_len:]",
      "enc = enc[-(max_ctx_len + 1):]", ("tests/eval/test_harness.py",)),
    M("eval_stop_settled_ignores_partial_stop", "moe_jax/eval/harness.py",
      "return not any(s.startswith(text[q:]) for s in stops",
      "return True or not any(s.startswith(text[q:]) for s in stops", ("tests/eval/test_harness.py",)),
    M("eval_wilson_z_one_sided", "moe_jax/artifacts/eval_records.py", "Z95 = 1.959963984540054",
      "Z95 = 1.6448536269514722", ("tests/eval/test_tasks.py",)),
    M("eval_records_intact_by_size_only", "moe_jax/io/integrity.py",
      "if got is None and layout.sha_key in entry:", "if False:", ("tests/eval/test_tasks.py",)),
    # --- greedy generation and the KV cache
    M("kv_cache_write_one_slot_late", "moe_jax/models/kv_cache.py", "at = (layer, 0, index, 0, 0)",
      "at = (layer, 0, index + 1, 0, 0)", ("tests/models/test_generate.py",)),
    M("decode_positions_not_advanced", "moe_jax/models/generate.py", "position=state.position + 1,",
      "position=state.position,", ("tests/models/test_generate.py",)),
    M("decode_exit_ignores_done", "moe_jax/models/generate.py",
      "return (carry[0] < num_steps) & ~jnp.all(carry[1].done)", "return carry[0] < num_steps",
      ("tests/models/test_generate.py",)),
    M("prefill_last_token_ignores_right_padding", "moe_jax/models/generate.py",
      "last = P - 1 - jnp.argmax(valid[:, ::-1], axis=1)", "last = jnp.full((B,), P - 1)",
      ("tests/models/test_generate.py",)),
    M("sliding_window_off_by_one", "moe_jax/models/layers.py",
      "allowed &= (q_pos[:, :, None] - k_pos[:, None, :]) < window",
      "allowed &= (q_pos[:, :, None] - k_pos[:, None, :]) <= window", ("tests/models/test_generate.py",)),
    # --- steering: targets, paired statistics, learned biases, sweep
    M("task_delta_sign_flipped", "moe_jax/analysis/experts.py", "    delta = t - r\n", "    delta = r - t\n",
      ("tests/steering/test_targets.py",)),
    M("random_control_overlaps_targets", "moe_jax/steering/targets.py",
      "pool = np.flatnonzero(~like.mask[l]) if exclude_targets else np.arange(E)", "pool = np.arange(E)",
      ("tests/steering/test_targets.py",)),
    M("mcnemar_b_c_swapped", "moe_jax/steering/paired.py", "b, c = int(np.sum(s & ~a)), int(np.sum(a & ~s))",
      "c, b = int(np.sum(s & ~a)), int(np.sum(a & ~s))", ("tests/steering/test_paired.py",)),
    M("bootstrap_unpaired_indices", "moe_jax/steering/paired.py", "boots = d[idx].mean(-1)",
      "boots = s[idx].mean(-1) - a[np.random.default_rng(seed + 1).integers(0, d.size, idx.shape)].mean(-1)",
      ("tests/steering/test_paired.py",)),
    M("paired_delta_sign_flipped", "moe_jax/steering/paired.py", "float(s.mean() - a.mean()), lo, hi",
      "float(a.mean() - s.mean()), lo, hi", ("tests/steering/test_paired.py",)),
    M("learned_bias_not_masked_to_band", "moe_jax/steering/learned.py", "    bias = bias * band[:, None]  #",
      "    bias = bias  #", ("tests/steering/test_learned.py",)),
    M("topk_change_unsorted", "moe_jax/steering/sweep.py",
      "changed = jnp.any(jnp.sort(base, -1) != jnp.sort(steered, -1), -1)", "changed = jnp.any(base != steered, -1)",
      ("tests/steering/test_sweep.py",)),
]


def locate(copy: str, m: Mutation) -> tuple[str | None, str]:
    """(file relative to the root, note) holding ``m.original`` exactly once; (None, why) if stale."""
    path = os.path.join(copy, m.file)
    if os.path.exists(path) and open(path).read().count(m.original) == 1:
        return m.file, ""
    hits = []
    for d, _, files in os.walk(os.path.join(copy, "moe_jax")):
        for f in files:
            if f.endswith(".py"):
                p = os.path.join(d, f)
                n = open(p).read().count(m.original)
                hits += [os.path.relpath(p, copy)] * n
    if len(hits) == 1:
        return hits[0], f"moved to {hits[0]}"
    return None, (f"snippet occurs {len(hits)} times in moe_jax/" if hits else "snippet not found")


def run_pytest(copy: str, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """(outcome, seconds, last output line) of ``pytest -x -q tests`` in the copy."""
    env = {**os.environ, "PYTHONPATH": copy, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t, f"no result within {timeout:.0f}s"
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    failures = [l for l in lines if l.startswith(("FAILED", "ERROR"))]
    last = "; ".join(failures[:3] + lines[-1:])
    outcome = {0: "passed", 1: "failed"}.get(r.returncode, "error")
    return outcome, time.perf_counter() - t, last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these mutations")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per pytest run (default 600)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated tests")
    ap.add_argument("--tests-from", metavar="REV", help="run the tests/ of this git revision (to compare suites)")
    args = ap.parse_args(argv)
    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate mutation names")
    unknown = [n for n in args.only if n not in names]
    if unknown:
        raise SystemExit(f"unknown mutation(s) {unknown}; see --list")
    todo = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        stale = 0
        for m in todo:
            file, note = locate(ROOT, m)
            stale += file is None
            print(f"{m.name:40s} {m.file:34s} {'STALE: ' + note if file is None else note or 'ok':24s} "
                  f"{' '.join(m.tests)}")
        return 1 if stale else 0

    rows, bad = [], False
    with tempfile.TemporaryDirectory(prefix="moe_jax_mutants.") as tmp:
        copy = os.path.join(tmp, "repo")
        shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
        if args.tests_from:
            shutil.rmtree(os.path.join(copy, "tests"))
            archive = subprocess.run(["git", "-C", ROOT, "archive", args.tests_from, "tests"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", copy], input=archive, check=True)
        probe = subprocess.run([sys.executable, "-c", "import moe_jax; print(moe_jax.__file__)"], cwd=copy,
                               env={**os.environ, "PYTHONPATH": copy}, capture_output=True, text=True)
        if not probe.stdout.strip().startswith(copy):
            raise SystemExit(f"the copy's moe_jax is not the one imported: {probe.stdout.strip() or probe.stderr}")
        def present(test: str) -> bool:
            """The test file exists in the copy's suite (and defines the named test function, if any)."""
            file, _, func = test.partition("::")
            path = os.path.join(copy, file)
            return os.path.exists(path) and (not func or f"def {func.split('[')[0]}(" in open(path).read())

        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in todo for t in m.tests if present(t)))
            outcome, secs, last = run_pytest(copy, tests, args.timeout * 2)
            print(f"baseline ({len(tests)} test targets, unmutated): {outcome} in {secs:.0f}s: {last}", flush=True)
            if outcome != "passed":
                print("the named tests fail without any mutation; fix them first")
                return 1
        for m in todo:
            file, note = locate(copy, m)
            if file is None:
                rows.append((m.name, "STALE", 0.0, f"{m.file}: {note}"))
                bad = True
                print(f"{m.name}: STALE ({note})", flush=True)
                continue
            tests = tuple(t for t in m.tests if present(t))
            if not tests:
                rows.append((m.name, "no test", 0.0, "none of its tests exists"))
                bad = True
                print(f"{m.name}: no test", flush=True)
                continue
            path = os.path.join(copy, file)
            pristine = open(path).read()
            with open(path, "w") as f:
                f.write(pristine.replace(m.original, m.replacement, 1))
            try:
                outcome, secs, last = run_pytest(copy, tests, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(pristine)
            status = {"failed": "caught", "passed": "SURVIVED", "timeout": "caught (timeout)"}.get(outcome, "ERROR")
            bad |= status in ("SURVIVED", "ERROR")
            rows.append((m.name, status, secs, note or last))
            print(f"{m.name}: {status} in {secs:.0f}s  {note or last}", flush=True)

    w = max(len(r[0]) for r in rows) if rows else 10
    print(f"\n{'mutation':{w}s}  {'result':16s} {'seconds':>7s}")
    for name, status, secs, _ in rows:
        print(f"{name:{w}s}  {status:16s} {secs:7.0f}")
    caught = sum(r[1].startswith("caught") for r in rows)
    print(f"\n{caught}/{len(rows)} caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
