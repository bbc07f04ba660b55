"""``MoeJaxLM``: an lm-eval model (registered as ``"moe_jax"``) that scores with moe_jax.

It mirrors lm-eval's HF backend (``HFLM``) for a causal model, text in, numbers out: the same
tokenisation (special tokens, BOS detection, trailing spaces moved onto the continuation, the
prefix token for an empty context), the same left truncation to ``max_length``, ``until`` plus the
EOS string as stop strings, ``max_gen_toks`` from the task's generation kwargs (default 256), the
text cut at the first stop string. Differences: log-softmax is always float32 (HFLM computes it in
the logits' dtype unless given ``softmax_dtype``: equal for float32 models); generation is greedy
only (``do_sample=True`` or a temperature > 0 is an error).

    import lm_eval, moe_jax.eval
    lm_eval.simple_evaluate(model="moe_jax", model_args="pretrained=DIR,batch_size=8", tasks=[...])
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jinja2
import lm_eval.models  # noqa: F401  lm-eval's own names: an already non-empty registry is never filled later
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (_add_special_kwargs, configure_pad_token, handle_stop_sequences,
                                  has_bos_prefix, normalize_gen_kwargs, postprocess_generated_text)
from tqdm import tqdm

from moe_jax import sharding as shd
from moe_jax.convert.loader import checkpoint_config, load_model
from moe_jax.convert.tokenizer import load_tokenizer
from moe_jax.eval import scoring
from moe_jax.eval.steering_file import load_intervention
from moe_jax.models.intervention import Intervention

log = logging.getLogger(__name__)

# Generation kwargs that only matter when sampling: ignored for greedy decoding, as transformers does.
_SAMPLING_ONLY = ("do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p")


@register_model("moe_jax")
class MoeJaxLM(TemplateLM):
    """lm-eval model over a moe_jax model (HF or converted directory, or an already loaded one).

    Args:
      pretrained: checkpoint directory, local or ``gs://`` (``moe_jax.load``); or pass ``model``.
      model: a loaded ``MoeModel`` with a tokenizer (``model.tokenizer``).
      tokenizer: a tokenizer or its directory (local or ``gs://``), instead of the model's.
      dtype: parameter/activation dtype when loading ``pretrained``.
      batch_size: requests per forward pass (int or a string of digits; "auto" is not supported).
      max_length: context window; default the model's ``max_position_embeddings`` (as HFLM).
      max_gen_toks: tokens generated when a task's generation kwargs do not say.
      intervention / steering: a router ``Intervention``, or the path of a JSON file describing one
        (``moe_jax/eval/steering_file.py``); applied to every forward pass.
      enable_thinking, chat_template_args, think_end_token, add_bos_token, prefix_token_id: as HFLM.
      dispatch: expert dispatch backend (``moe_jax.models.experts.BACKENDS``).
      decode_chunk: tokens decoded between stop-string checks.
      data_parallel, model_parallel: a device mesh of data x model devices (batches split over data;
        experts, heads and MLP widths over model); default one device.
      device, max_batch_size: accepted for lm-eval's CLI and ignored (JAX places the model).
    """

    def __init__(self, pretrained: str | None = None, model: Any = None, tokenizer: Any = None,
                 dtype: str = "float32", batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, intervention: Intervention | None = None, steering: str | None = None,
                 enable_thinking: bool | None = None, chat_template_args: dict | None = None,
                 think_end_token: str | int | None = None, add_bos_token: bool | None = None,
                 prefix_token_id: int | None = None, dispatch: str = "auto", decode_chunk: int = 32,
                 data_parallel: int | str | None = None, model_parallel: int | str | None = None,
                 device: str | None = None, max_batch_size: int | None = None):
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("MoeJaxLM needs exactly one of pretrained= (a checkpoint directory) or model= "
                             "(a loaded MoeModel)")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.mesh = _mesh(data_parallel, model_parallel, self.batch_size)
        if model is None:
            model = load_model(pretrained, dtype=dtype, backend=dispatch, load_tokenizer=True,
                               shardings=None if self.mesh is None else _param_shardings(pretrained, self.mesh))
        self.model = model
        self.cfg = model.cfg
        self.params = model.param_tree
        if self.mesh is not None and pretrained is None:  # a loaded model: place its parameters on the mesh
            self.params = jax.device_put(self.params, shd.param_shardings(self.cfg, self.mesh))
        self.dispatch = dispatch
        if isinstance(tokenizer, (str, os.PathLike)):  # a directory, local or gs://
            tokenizer = load_tokenizer(tokenizer)
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if tokenizer is None:
            raise ValueError(f"no tokenizer: {pretrained or 'the model'} has none; pass tokenizer=")
        self.tokenizer = configure_pad_token(tokenizer)
        self.pretrained = pretrained
        self._max_length = None if max_length is None else _positive_int(max_length, "max_length")
        self._max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks")
        self.decode_chunk = _positive_int(decode_chunk, "decode_chunk")
        self.add_bos_token = _maybe_bool(add_bos_token)
        self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
        self.enable_thinking = _maybe_bool(enable_thinking)
        self.chat_template_args = dict(chat_template_args or {})
        if self.enable_thinking is not None:
            self.chat_template_args["enable_thinking"] = self.enable_thinking
        self.think_end_token = (int(think_end_token) if isinstance(think_end_token, str) and think_end_token.isdigit()
                                else think_end_token)
        if self.enable_thinking and think_end_token is None:
            raise ValueError("enable_thinking=True needs think_end_token (the string or id that ends the "
                             "thinking part), as in lm-eval's HF backend")
        if intervention is not None and steering is not None:
            raise ValueError("pass intervention= or steering=, not both")
        shape = (self.cfg.num_moe_layers, self.cfg.num_experts)
        if steering is not None:
            intervention = load_intervention(steering, self.cfg)
        elif intervention is not None:
            for name, f in intervention._asdict().items():
                if f is not None and np.shape(f) != shape:
                    raise ValueError(f"intervention field {name!r} has shape {list(np.shape(f))}; the model "
                                     f"needs [moe_layers, experts] = {list(shape)}")
        self.intervention = intervention
        self.steering = steering
        self.stop_token_ids = _eos_ids(self.tokenizer)
        self._stats = scoring.new_stats()

    # ---- lm-eval's model interface -----------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or int(self.cfg.max_position_embeddings)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    @property
    def stats(self) -> dict:
        """Counters since construction: compiles (jit cache misses), truncated (requests cut from the
        left), batches, tokens (real input tokens), padded_tokens and padded_fraction."""
        s = dict(self._stats)
        total = s["tokens"] + s["padded_tokens"]
        s["padded_fraction"] = s["padded_tokens"] / total if total else 0.0
        return s

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False  # the text already starts with BOS
        enc = self.tokenizer.encode(string, **special)
        return enc[-left_truncate_len:] if left_truncate_len else enc

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        kwargs = dict(tokenize=False, add_generation_prompt=add_generation_prompt,
                      continue_final_message=not add_generation_prompt, **self.chat_template_args)
        try:
            return self.tokenizer.apply_chat_template(chat_history, **kwargs)
        except jinja2.exceptions.TemplateError:
            log.warning("Failed to apply chat template. removing the system role in chat history.")
            return self.tokenizer.apply_chat_template([m for m in chat_history if m["role"] != "system"], **kwargs)

    def get_model_info(self) -> dict:
        return {"model_num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(self.params))),
                "model_dtype": str(self.params["embed"].dtype),
                "moe_jax_steering": self.steering, "moe_jax_intervention": self.intervention is not None}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if self.enable_thinking:
            names = sorted({r.task_name for r in requests if getattr(r, "task_name", None)})
            raise ValueError(f"enable_thinking=True is not compatible with loglikelihood tasks "
                             f"(task(s): {', '.join(names)})")
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """``requests``: ``((context, continuation) | None, context_ids, continuation_ids)`` triples."""
        with tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests") as bar:
            res = scoring.loglikelihood_tokens(
                self.params, self.cfg, [(c, d) for _, c, d in requests], max_length=self.max_length,
                batch_size=self.batch_size, intervention=self.intervention, backend=self.dispatch,
                stats=self._stats, progress=bar.update, mesh=self.mesh)
        for (request_str, _, _), answer in zip(requests, res):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, (string,) in enumerate(r.args for r in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores):
            totals[i] += logprob
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (r.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        res: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests") as bar:
            for idx in groups.values():
                gen_kwargs = requests[idx[0]].args[1]
                if not isinstance(gen_kwargs, dict):
                    raise ValueError(f"generation kwargs must be a dict, got {type(gen_kwargs).__name__}")
                kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_gen_toks = kwargs.pop("max_gen_toks")
                _check_greedy(kwargs)
                contexts = [requests[i].args[0] for i in idx]
                texts = self._generate(contexts, until, max_gen_toks, bar.update)
                for i, context, s in zip(idx, contexts, texts):
                    res[i] = s
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), s)
        return res  # type: ignore[return-value]

    # ---- internals -------------------------------------------------------------------------

    def _generate(self, contexts: list[str], until: list[str], max_gen_toks: int, progress) -> list[str]:
        max_ctx_len = self.max_length - max_gen_toks
        if max_ctx_len <= 0:
            raise ValueError(f"max_gen_toks {max_gen_toks} must be less than max_length {self.max_length}")
        prompts = []
        for c in contexts:
            enc = self.tokenizer.encode(c, **self._batch_special_kwargs(c))
            if len(enc) > max_ctx_len:
                self._stats["truncated"] += 1
                enc = enc[-max_ctx_len:]
            prompts.append(enc)
        stops = [s for s in until if s]
        outs = scoring.greedy_until_tokens(
            self.params, self.cfg, prompts, max_new_tokens=max_gen_toks, batch_size=self.batch_size,
            stop_token_ids=self.stop_token_ids, is_done=lambda toks: self._stopped(toks, stops),
            chunk=self.decode_chunk,
            pad_id=self.tokenizer.pad_token_id or 0, intervention=self.intervention, backend=self.dispatch,
            stats=self._stats, progress=progress, mesh=self.mesh)
        texts = []
        for toks in outs:
            if isinstance(self.think_end_token, int) and self.think_end_token in toks:
                toks = toks[len(toks) - toks[::-1].index(self.think_end_token):]
                s = self.tok_decode(toks).lstrip()
            else:
                s = self.tok_decode(toks)
            texts.append(postprocess_generated_text(
                s, until, self.think_end_token if isinstance(self.think_end_token, str) else None))
        return texts

    def _stopped(self, tokens: list[int], stops: list[str]) -> bool:
        """Whether a row's generated ``tokens`` are final: a stop string cuts their text for good."""
        return _stop_settled(self.tok_decode(tokens), stops)

    def _batch_special_kwargs(self, context: str) -> dict:
        """Special-token handling of HFLM's batch encoding (decided per prompt here, per batch there)."""
        if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)):
            return {"add_special_tokens": False}
        if self.add_bos_token is not None:
            return {"add_special_tokens": self.add_bos_token}
        return {}


def _stop_settled(text: str, stops: list[str]) -> bool:
    """True when ``text`` contains a stop string and no longer text can move the first cut earlier
    (no stop string starts before the cut and runs past the end of ``text``)."""
    cut = min((p for p in (text.find(s) for s in stops) if p >= 0), default=-1)
    if cut < 0:
        return False
    return not any(s.startswith(text[q:]) for s in stops for q in range(max(0, len(text) - len(s) + 1), cut))


def _mesh(data_parallel, model_parallel, batch_size: int):
    """The device mesh of ``data_parallel`` x ``model_parallel`` devices (None: one device, as before).
    Batches are split over ``data`` (``batch_size`` must divide by it); experts, heads and MLP widths
    over ``model`` (moe_jax.sharding's logical-axis rules)."""
    if data_parallel in (None, "") and model_parallel in (None, ""):
        return None
    dp = _positive_int(data_parallel, "data_parallel") if data_parallel not in (None, "") else 1
    mp = _positive_int(model_parallel, "model_parallel") if model_parallel not in (None, "") else 1
    if dp * mp > jax.device_count():
        raise ValueError(f"data_parallel={dp} x model_parallel={mp} needs {dp * mp} devices; "
                         f"{jax.device_count()} are available")
    if batch_size % dp:
        raise ValueError(f"batch_size={batch_size} must be a multiple of data_parallel={dp}")
    return shd.make_mesh({"data": dp, "model": mp}, jax.devices()[:dp * mp])


def _param_shardings(pretrained: str, mesh):
    """Per-leaf shardings for the checkpoint in ``pretrained`` (each tensor is placed as it is read)."""
    return shd.param_shardings(checkpoint_config(pretrained), mesh)


def _check_greedy(kwargs: dict) -> None:
    if kwargs.get("do_sample"):
        raise ValueError(f"moe_jax generates greedily only: got do_sample=True / temperature="
                         f"{kwargs.get('temperature')}; use do_sample=False or temperature=0")
    if int(kwargs.get("num_beams", 1)) != 1:
        raise ValueError(f"beam search is not supported (num_beams={kwargs['num_beams']})")
    unknown = sorted(set(kwargs) - set(_SAMPLING_ONLY) - {"num_beams"})
    if unknown:
        raise ValueError(f"unsupported generation kwargs {unknown}; supported: until, max_gen_toks (and aliases), "
                         f"do_sample=False, temperature=0, num_beams=1")


def _eos_ids(tokenizer) -> list[int]:
    """Token ids that end a row, as transformers' ``generate`` reads them: ``generation_config.json``'s
    ``eos_token_id``, else ``config.json``'s, in the tokenizer's directory; else the tokenizer's EOS."""
    d = getattr(tokenizer, "name_or_path", "") or ""
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(d, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token_id")
            if eos is not None:
                return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def _positive_int(v, name: str) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {v!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return n


def _maybe_bool(v):
    """lm-eval's model_args parser turns "true"/"false" into bools; accept strings from elsewhere too."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ValueError(f"expected a boolean, got {v!r}")
