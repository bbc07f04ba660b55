"""Synthetic routing-statistics stores with planted structure, for tests and demos.

The router logits of token t of aligned sequence i in language x at MoE layer l are

    z = c(l) * content[i, l] + s(l) * w_x * v_x[l] + bias_x[l] + noise,

with ``content`` shared by all languages (translations say the same thing) and weighted by an
inverted-U ``c(l)`` (meaning dominates the middle layers), a U-shaped language-specific strength
``s(l)`` (high in the first and last layers, low in the middle), a
per-language weight ``w_x`` (0 for the pivot; accuracy falls as it grows), language vectors
``v_x`` that share a component within a language family, planted language-exclusive experts
(``+bias`` for the language, ``-bias`` for all others) and, in a separate English task store,
planted task experts. Statistics are reduced exactly as the store format documents. Demo::

    python -m moe_jax.analysis.synthetic /tmp/demo   # writes /tmp/demo/{routing, tasks/math, accuracy.json,
                                                     #                   synthetic_config.py}
    python -m moe_jax.launch --config=/tmp/demo/synthetic_config.py --workdir=/tmp/demo

The second command runs the analyze and report stages; ``synthetic_config.py`` points the correlation
at the planted ``accuracy.json`` beside it (Pearson r about -0.99 over the middle band). The task
store lies where the collect stage puts task stores (``workdir/tasks/<name>``), so the analyze stage
finds it without ``analysis.task_stores``. A directory whose stores, ``accuracy.json`` or config were
not written by a synthetic run is refused: nothing the user owns is replaced.

The directory may be a bucket (``gs://bucket/prefix``, through ``moe_jax.io.storage``): the config
written there names that URL instead of its own location; copy it to a local file to launch it
(the command is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from moe_jax.analysis.tables import write_json
from moe_jax.artifacts import layout as wd, routing_store as store_lib
from moe_jax.io import storage

# (code, weight w_x, family, planted accuracy): accuracy falls as the language-specific weight grows.
DEFAULT_LANGUAGES = (
    ("eng_Latn", 0.0, "latin", 0.90),
    ("fra_Latn", 0.5, "latin", 0.82),
    ("spa_Latn", 0.6, "latin", 0.79),
    ("hin_Deva", 1.0, "indic", 0.66),
    ("ben_Beng", 1.2, "indic", 0.61),
    ("tha_Thai", 1.5, "thai", 0.52),
)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """All planted parameters; tests read the ground truth from here."""

    languages: tuple[tuple[str, float, str, float], ...] = DEFAULT_LANGUAGES
    n_layers: int = 12
    n_experts: int = 16
    top_k: int = 4
    n_sequences: int = 40
    min_len: int = 8
    max_len: int = 20
    strength_min: float = 0.2
    strength_max: float = 3.0
    content_min: float = 0.5
    content_max: float = 2.0
    noise_scale: float = 1.0
    exclusive: tuple[tuple[str, int, int], ...] = (("tha_Thai", 10, 3), ("hin_Deva", 1, 7))  # (lang, layer, expert)
    exclusive_bias: float = 6.0
    task_experts: tuple[tuple[int, int], ...] = ((4, 5), (5, 5), (5, 9), (6, 9), (7, 12))  # (layer, expert)
    task_bias: float = 6.0
    first_layer_collapse: bool = False  # Phi-3.5-like: layer 0 sends every token to the same experts
    moe_layer_ids: tuple[int, ...] | None = None
    pivot: str = "eng_Latn"
    seed: int = 0
    warning: str = "synthetic routing statistics with planted structure: numbers mean nothing"

    @property
    def codes(self) -> list[str]:
        return [l[0] for l in self.languages]

    def _u(self) -> np.ndarray:
        """0 at the central layer, 1 at the first and last: ``[layers]``."""
        c = (self.n_layers - 1) / 2
        return ((np.arange(self.n_layers) - c) / max(c, 1)) ** 2

    def strength(self) -> np.ndarray:
        """U-shaped language-specific strength ``s(l)`` ``[layers]``."""
        return self.strength_min + (self.strength_max - self.strength_min) * self._u()

    def content_weight(self) -> np.ndarray:
        """Inverted-U weight ``c(l)`` of the shared content ``[layers]``."""
        return self.content_max - (self.content_max - self.content_min) * self._u()

    def accuracy(self) -> dict[str, float]:
        return {code: acc for code, _, _, acc in self.languages}

    def task_mask(self) -> np.ndarray:
        """Planted task experts ``[layers, experts]``."""
        m = np.zeros((self.n_layers, self.n_experts), bool)
        for l, e in self.task_experts:
            m[l, e] = True
        return m

    def layer_ids(self) -> list[int]:
        return list(self.moe_layer_ids) if self.moe_layer_ids is not None else list(range(self.n_layers))


def _reduce(spec: SyntheticSpec, z: np.ndarray, lengths: np.ndarray, ids: list[str],
            with_token_topk: bool) -> dict[str, np.ndarray]:
    """Store arrays from token logits ``z [tokens, layers, experts]`` of sequences of ``lengths``."""
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log(np.maximum(p, 1e-30))).sum(-1)  # [T, L]
    topk = np.argsort(-z, axis=-1, kind="stable")[..., : spec.top_k]  # [T, L, k]
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, topk, 1.0, axis=-1)
    kept = p * onehot
    kept /= kept.sum(-1, keepdims=True)  # the softmax on the token's top-k, renormalised over it
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    per_seq = lambda x: np.add.reduceat(x, starts, axis=0) / lengths.reshape((-1,) + (1,) * (x.ndim - 1))
    arrays = dict(
        seq_ids=np.array(ids), seq_lengths=lengths.astype(np.int32),
        seq_mean_probs=per_seq(p).astype(np.float32), seq_topk_freq=per_seq(onehot).astype(np.float32),
        seq_topk_weight=per_seq(kept).astype(np.float32),
        seq_token_entropy=per_seq(h).astype(np.float32), topk_counts=onehot.sum(0).astype(np.int64),
        gate_weight_sums=(p * onehot).sum(0).astype(np.float64),
        token_totals=np.full(spec.n_layers, lengths.sum(), np.int64))
    if with_token_topk:
        arrays["token_topk"] = topk.astype(np.int16)
    return arrays


def _content(spec: SyntheticSpec, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence content logits ``[N, L, E]`` and base lengths ``[N]``, shared by all languages."""
    rng = np.random.default_rng((spec.seed, stream))
    content = spec.content_weight()[:, None] * rng.standard_normal((spec.n_sequences, spec.n_layers, spec.n_experts))
    return content, rng.integers(spec.min_len, spec.max_len + 1, spec.n_sequences)


def language_arrays(spec: SyntheticSpec, lang: str, with_token_topk: bool = True, content_stream: int = 0,
                    extra_bias: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Store arrays of one language (``extra_bias [layers, experts]`` is added to every token)."""
    codes = spec.codes
    xi = codes.index(lang)
    _, weight, family, _ = spec.languages[xi]
    families = sorted({l[2] for l in spec.languages})
    L, E = spec.n_layers, spec.n_experts
    fam = np.random.default_rng((spec.seed, 2, families.index(family))).standard_normal((L, E))
    rng = np.random.default_rng((spec.seed, 3, xi, content_stream))
    v = 0.8 * fam + 0.6 * rng.standard_normal((L, E))
    bias = spec.strength()[:, None] * weight * v
    for x, l, e in spec.exclusive:
        bias[l, e] += spec.exclusive_bias if x == lang else -spec.exclusive_bias
    if extra_bias is not None:
        bias = bias + extra_bias
    content, base = _content(spec, content_stream)
    lengths = np.maximum(np.round(base * (1 + 0.15 * weight)).astype(np.int64), 2)
    seq_of_token = np.repeat(np.arange(spec.n_sequences), lengths)
    z = content[seq_of_token] + bias + spec.noise_scale * rng.standard_normal((lengths.sum(), L, E))
    if spec.first_layer_collapse:
        z[:, 0] = 0.1 * rng.standard_normal((lengths.sum(), E))
        z[:, 0, : spec.top_k] += 8.0
    ids = [f"s{i:04d}" for i in range(spec.n_sequences)]
    return _reduce(spec, z, lengths, ids, with_token_topk)


HIDDEN_DIM = 32


def hidden_arrays(spec: SyntheticSpec, lang: str) -> dict[str, np.ndarray]:
    """Planted representation summaries of one language: ``seq_hidden [N, D, 32]`` float16 and
    ``seq_lens_mass [N, D, 2]`` (D = decoder layers + 1 states). A sentence's state is its shared meaning
    weighted by the inverted-U ``c(l)``, a language offset (removed by mean-centring), a language-specific
    part of each sentence weighted by ``w_x s(l)`` and noise, so representation alignment peaks in the
    middle and falls with ``w_x``; the lens puts mass on the
    pivot's tokens where meaning dominates and on the language's own tokens where it does not."""
    xi, weight = spec.codes.index(lang), spec.languages[spec.codes.index(lang)][1]
    ids = spec.layer_ids()
    n_states = max(ids) + 2
    at = np.clip(np.searchsorted(ids, np.arange(n_states) - 1), 0, spec.n_layers - 1)  # nearest MoE layer
    content, strength = spec.content_weight()[at], spec.strength()[at]  # [D]
    meaning = np.random.default_rng((spec.seed, 4)).standard_normal((spec.n_sequences, 1, HIDDEN_DIM))
    rng = np.random.default_rng((spec.seed, 5, xi))
    offset = rng.standard_normal((1, 1, HIDDEN_DIM))  # what every sentence of the language shares (centred away)
    own = rng.standard_normal((spec.n_sequences, n_states, HIDDEN_DIM))  # language-specific, per sentence
    h = (content[None, :, None] * meaning + offset + 0.5 * weight * strength[None, :, None] * own
         + 0.3 * rng.standard_normal((spec.n_sequences, n_states, HIDDEN_DIM)))
    share = content / (content + weight * strength + 1e-9)  # [D]
    pivot_mass = np.broadcast_to(0.6 * share, (spec.n_sequences, n_states))
    own_mass = np.broadcast_to(0.6 if weight == 0 else 0.6 * (1 - share), (spec.n_sequences, n_states))
    return {"seq_hidden": h.astype(np.float16),
            "seq_lens_mass": np.stack([pivot_mass, own_mass], -1).astype(np.float32)}


def _meta(spec: SyntheticSpec, dataset: str) -> dict:
    return {"model": "synthetic", "dataset": dataset, "fingerprint": f"synthetic-{dataset}-{spec.seed}",
            "moe_layer_ids": spec.layer_ids(), "num_experts": spec.n_experts, "top_k": spec.top_k,
            "warning": spec.warning}


def write_synthetic_store(path: str, spec: SyntheticSpec = SyntheticSpec(), with_token_topk: bool = True) -> dict:
    """Writes the multilingual store of ``spec`` at ``path``; returns its meta."""
    meta = dict(_meta(spec, "synthetic-parallel"), hidden_states={"dim": HIDDEN_DIM, "pivot": spec.pivot,
                                                                     "planted": True})
    meta = store_lib.open_store(path, meta, overwrite=True)
    for lang in spec.codes:
        a = dict(language_arrays(spec, lang, with_token_topk), **hidden_arrays(spec, lang))
        store_lib.write_language(path, lang, a, {"n_sequences": spec.n_sequences,
                                                 "n_tokens": int(a["seq_lengths"].sum())})
    return store_lib.read_meta(path) or meta


def write_synthetic_task_store(path: str, spec: SyntheticSpec = SyntheticSpec(), name: str = "math") -> dict:
    """Writes an English (pivot) task store with the planted task experts of ``spec`` at ``path``."""
    meta = store_lib.open_store(path, _meta(spec, f"synthetic-task-{name}"), overwrite=True)
    a = language_arrays(spec, spec.pivot, with_token_topk=False, content_stream=1,
                        extra_bias=spec.task_bias * spec.task_mask())
    store_lib.write_language(path, spec.pivot, a, {"n_sequences": spec.n_sequences,
                                                   "n_tokens": int(a["seq_lengths"].sum())})
    return store_lib.read_meta(path) or meta


CONFIG_NAME = "synthetic_config.py"
_CONFIG_MARK = "# Written by python -m moe_jax.analysis.synthetic"
# The pipeline config of a synthetic workdir: the analyze and report stages, the correlation against the
# planted accuracies beside it (found from the file's own location, so the directory may be moved).
CONFIG_TEXT = _CONFIG_MARK + """: the analyze and report stages on the synthetic
# workdir beside this file, the correlation against its planted accuracies (accuracy.json):
#     python -m moe_jax.launch --config=THIS_FILE --workdir=ITS_DIRECTORY
import os

from moe_jax.pipeline.registry import default_config

WARNING = {warning!r}
{_HERE}


def get_config():
    c = default_config()
    c.stages = "analyze,report"
    c.model.warning = WARNING  # printed by launch instead of the default model's "random weights"
    c.analysis.accuracy = os.path.join(HERE, "accuracy.json")
    c.analysis.task_stores = {"math": os.path.join(HERE, "tasks", "math")}
    c.report.title = "Synthetic routing statistics with planted structure"
    return c
"""


_HERE = "HERE = os.path.dirname(os.path.abspath(__file__))"
CONFIG_TEXT = CONFIG_TEXT.replace("{_HERE}", _HERE)


def _refuse_foreign(paths: dict[str, str], accuracy: dict[str, float]) -> None:
    """Raises FileExistsError when a path of ``paths`` holds something a synthetic run did not write
    (another model's store, the user's own accuracy file or config): write_demo replaces only its own."""
    for key in ("routing", "task_math"):
        path = paths[key]
        if not storage.listdir(path):
            continue
        meta = store_lib.read_meta(path)
        if meta is None or meta.get("model") != "synthetic":
            what = f"the routing statistics of {meta.get('model')!r}" if meta else "files that are not a routing store"
            raise FileExistsError(f"{path} holds {what}, not a synthetic store: choose another directory "
                                  "(a synthetic run replaces only its own stores)")
    if storage.exists(paths["accuracy"]):
        try:
            same = json.loads(storage.read_bytes(paths["accuracy"])) == accuracy
        except ValueError:
            same = False
        if not same:
            raise FileExistsError(f"{paths['accuracy']} exists and does not hold the planted accuracies: choose "
                                  "another directory (a synthetic run replaces only its own files)")
    if storage.exists(paths["config"]):
        if not storage.read_bytes(paths["config"]).startswith(_CONFIG_MARK.encode()):
                raise FileExistsError(f"{paths['config']} exists and was not written by a synthetic run: choose "
                                      "another directory")


def write_demo(workdir: str, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, str]:
    """``workdir/routing`` (main store), ``workdir/tasks/math`` (task store), ``workdir/accuracy.json`` (the
    planted accuracies) and ``workdir/synthetic_config.py`` (the analyze + report config that correlates
    against them): the layout the collect stage writes (``paths["task_math"]`` is the task store).

    Refuses (FileExistsError, before writing anything) a workdir whose stores or files were not written by
    an earlier synthetic run."""
    paths = {"routing": wd.routing_dir(workdir), "task_math": wd.task_store_dir(workdir, "math"),
             "accuracy": storage.join(workdir, "accuracy.json"), "config": storage.join(workdir, CONFIG_NAME)}
    _refuse_foreign(paths, spec.accuracy())
    write_synthetic_store(paths["routing"], spec)
    write_synthetic_task_store(paths["task_math"], spec)
    write_json(paths["accuracy"], spec.accuracy())
    text = CONFIG_TEXT.replace("{warning!r}", repr(spec.warning))
    if storage.is_remote(workdir):  # launch reads a local config file: a copy of this one names the bucket
        text = text.replace(_HERE, f"HERE = {storage.absolute(workdir)!r}  # the synthetic workdir (a bucket)")
    storage.atomic_write_bytes(paths["config"], text.encode())
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_jax.analysis.synthetic",
        description="Writes synthetic routing statistics with planted structure (a U-shaped divergence, "
                    "language-exclusive and task experts, accuracies falling with divergence) into WORKDIR: "
                    f"routing/, tasks/math/, accuracy.json and {CONFIG_NAME}. Then "
                    f"`python -m moe_jax.launch --config=WORKDIR/{CONFIG_NAME} --workdir=WORKDIR` analyses "
                    "them and renders WORKDIR/report/index.html.")
    parser.add_argument("workdir", metavar="WORKDIR", help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic draws (default 0)")
    args = parser.parse_args(argv)
    try:
        paths = write_demo(args.workdir, SyntheticSpec(seed=args.seed))
    except FileExistsError as e:
        parser.exit(1, f"error: {e}\n")
    for k, v in paths.items():
        print(f"{k}: {v}")
    if storage.is_remote(args.workdir):
        print(f"next: gcloud storage cp {paths['config']} . && "
              f"python -m moe_jax.launch --config={CONFIG_NAME} --workdir={args.workdir}")
    else:
        print(f"next: python -m moe_jax.launch --config={paths['config']} --workdir={args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
