"""libpeft for Python: a pure-Python ctypes binding (no compiled extension).

    import libpeft
    with libpeft.Model("path/to/hf-model", threads=2) as m:
        m.attach_lora(targets="all-linear", rank=8, alpha=16)
        m.set_optimizer(lr=1e-3)
        for batch in batches:                # B x T token ids: lists, array('i') or NumPy
            result = m.step(batch)           # result.loss, result.grad_norm, result.tokens
        m.save_adapter("out/adapter")        # a Hugging Face PEFT adapter directory

The shared library is found through $LIBPEFT_PATH, then the system's library path
(``ctypes.util.find_library("peft")``), then a build tree beside this package.
Every failing call raises libpeft.Error with the library's message.
"""
import array
import ctypes
import ctypes.util
import os
import re

__all__ = ["Error", "Model", "StepResult", "Tokenizer", "version", "TARGETS"]

# ---- the shared library -------------------------------------------------------------


def _load():
    cands = []
    if os.environ.get("LIBPEFT_PATH"):
        cands.append(os.environ["LIBPEFT_PATH"])
    found = ctypes.util.find_library("peft")
    if found:
        cands.append(found)
    here = os.path.dirname(os.path.abspath(__file__))
    for build in ("build", "build-test"):
        cands.append(os.path.join(here, "..", "..", build, "libpeft.so"))
    errors = []
    for c in cands:
        try:
            return ctypes.CDLL(c)
        except OSError as e:
            errors.append(f"{c}: {e}")
    raise OSError("libpeft shared library not found (set LIBPEFT_PATH): " + "; ".join(errors))


_lib = _load()
_c_int, _c_u32, _c_i32, _c_u64, _c_i64 = ctypes.c_int, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64, ctypes.c_int64
_c_float, _c_double, _c_char_p, _c_void_p = ctypes.c_float, ctypes.c_double, ctypes.c_char_p, ctypes.c_void_p
_i32p = ctypes.POINTER(_c_i32)

# ---- structs: field for field as in peft/peft.h ----------------------------------------


class _OpenOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("n_threads", _c_i32), ("backend", _c_char_p), ("frozen_dtype", _c_char_p)]


class _LoraOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("targets", _c_u32), ("layers", _c_char_p), ("rank", _c_i32),
                ("alpha", _c_float), ("use_rslora", _c_i32), ("dropout", _c_float), ("init", _c_i32),
                ("seed", _c_u64), ("use_dora", _c_i32), ("rank_pattern", _c_char_p), ("alpha_pattern", _c_char_p),
                ("variant", _c_i32), ("modules_to_save", _c_u32), ("norms", _c_u32),
                ("token_indices", ctypes.POINTER(_c_i32)), ("n_token_indices", _c_i32), ("target_regex", _c_char_p),
                ("head_token_indices", ctypes.POINTER(_c_i32)), ("n_head_token_indices", _c_i32), ("bias", _c_i32),
                ("exclude_regex", _c_char_p)]

_VARIANTS = {"lora": 0, "loha": 1, "lokr": 2}
_BIAS = {"none": 0, "all": 1, "lora_only": 2}
_NORMS = {"input": 1, "post_attention": 2, "final": 4, "pre_feedforward": 8, "post_feedforward": 16,
          "q_norm": 32, "k_norm": 64}  # PEFT_NORM_*


class _SaveOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("base_model_name_or_path", _c_char_p), ("convert_to_lora", _c_i32)]


class _IA3Options(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("targets", _c_u32), ("feedforward", _c_u32), ("layers", _c_char_p),
                ("modules_to_save", _c_u32), ("norms", _c_u32)]


class _VeraOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("targets", _c_u32), ("layers", _c_char_p), ("rank", _c_i32),
                ("d_initial", ctypes.c_float), ("dropout", ctypes.c_float), ("seed", _c_u64),
                ("modules_to_save", _c_u32), ("norms", _c_u32)]


class _NormsOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("norms", _c_u32), ("layers", _c_char_p)]


class _PromptOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("n_virtual", _c_i32), ("init", _c_i32), ("init_tokens", _i32p),
                ("n_init_tokens", _c_i32), ("init_text", _c_char_p), ("tokenizer_name_or_path", _c_char_p),
                ("seed", _c_u64)]


class _CombineOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("combination", _c_i32), ("svd_rank", _c_i32), ("majority_sign", _c_i32),
                ("density", _c_double), ("svd_clamp", _c_double), ("seed", _c_u64)]


class _GgufExportOptions(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("type", _c_i32), ("name", _c_char_p)]


_GGUF_TYPES = {"same": -1, "f32": 0, "f16": 1, "bf16": 30, "q4_0": 2, "q8_0": 8, "q4_k": 12, "q6_k": 14}


class _ConvertOptions(ctypes.Structure):
    _fields_ = [("version", _c_i32), ("n_heads", _c_i32), ("n_kv_heads", _c_i32), ("n_layers", _c_i32),
                ("architecture", _c_char_p), ("name", _c_char_p), ("base_model", _c_char_p)]


COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")


class _Batch(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("tokens", _i32p), ("labels", _i32p), ("n_seq", _c_i32),
                ("seq_len", _c_i32), ("seq_ids", _i32p)]


class _StepResult(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("loss", _c_double), ("grad_norm", _c_double), ("tokens", _c_u64),
                ("lr", _c_double), ("updated", _c_i32), ("step", _c_i64)]


class _EvalResult(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("loss_sum", _c_double), ("tokens", _c_u64)]


class _ModelInfo(ctypes.Structure):
    _fields_ = [("version", _c_u32), ("architecture", ctypes.c_char * 32), ("n_layers", _c_i32),
                ("hidden_size", _c_i32), ("intermediate_size", _c_i32), ("n_heads", _c_i32),
                ("n_kv_heads", _c_i32), ("head_dim", _c_i32), ("vocab_size", _c_i32),
                ("tied_embeddings", _c_i32), ("n_params", _c_u64), ("n_trainable", _c_u64),
                ("rms_norm_eps", _c_float), ("rope_theta", _c_float), ("backend", ctypes.c_char * 16),
                ("n_threads", _c_i32), ("weights_dtype", ctypes.c_char * 8),
                ("adapter_type", ctypes.c_char * 32), ("n_virtual_tokens", _c_i32)]


_P = ctypes.POINTER


def _fn(name, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_strerror = _fn("peft_strerror", _c_char_p, _c_int)
_last_error = _fn("peft_last_error", _c_char_p)
_version = _fn("peft_version", _c_char_p)
_model_open = _fn("peft_model_open", _c_int, _P(_c_void_p), _c_char_p, _P(_OpenOptions))
_model_close = _fn("peft_model_close", None, _P(_c_void_p))
_get_info = _fn("peft_model_get_info", _c_int, _c_void_p, _P(_ModelInfo))
_attach_lora = _fn("peft_attach_lora", _c_int, _c_void_p, _P(_LoraOptions), _P(_c_u64))
_count_lora = _fn("peft_count_lora", _c_int, _P(_c_u64), _c_void_p, _P(_LoraOptions))
_attach_ia3 = _fn("peft_attach_ia3", _c_int, _c_void_p, _P(_IA3Options), _P(_c_u64))
_attach_norms = _fn("peft_attach_norms", _c_int, _c_void_p, _P(_NormsOptions), _P(_c_u64))
_attach_prompt = _fn("peft_attach_prompt", _c_int, _c_void_p, _P(_PromptOptions), _P(_c_u64))
_attach_tokens = _fn("peft_attach_tokens", _c_int, _c_void_p, _i32p, _c_i32, _P(_c_u64))
_adapter_load = _fn("peft_adapter_load", _c_int, _c_void_p, _c_char_p, _c_char_p)
_adapter_set = _fn("peft_adapter_set", _c_int, _c_void_p, _c_char_p)
_adapter_delete = _fn("peft_adapter_delete", _c_int, _c_void_p, _c_char_p)
_adapter_list = _fn("peft_adapter_list", _c_int, _c_void_p, _P(_c_char_p), _c_i32, _P(_c_i32), _P(_c_i32))
_adapter_combine = _fn("peft_adapter_combine_ex", _c_int, _c_void_p, _P(_c_char_p), _P(ctypes.c_double), _c_i32,
                       _c_char_p, _P(_CombineOptions))
_attach_vera = _fn("peft_attach_vera", _c_int, _c_void_p, _P(_VeraOptions), _P(_c_u64))
_detach = _fn("peft_detach", _c_int, _c_void_p)
_opt_set = _fn("peft_opt_set", _c_int, _c_void_p, _c_int, _c_double)
_opt_get = _fn("peft_opt_get", _c_int, _c_void_p, _c_int, _P(_c_double))
_step = _fn("peft_step", _c_int, _c_void_p, _P(_Batch), _P(_StepResult))
_eval = _fn("peft_eval", _c_int, _c_void_p, _P(_Batch), _P(_EvalResult))
_save = _fn("peft_save_adapter", _c_int, _c_void_p, _c_char_p, _c_void_p)
_load_ad = _fn("peft_load_adapter", _c_int, _c_void_p, _c_char_p)
_merge = _fn("peft_merge_adapter", _c_int, _c_void_p)
_unmerge = _fn("peft_unmerge_adapter", _c_int, _c_void_p)
_save_merged = _fn("peft_save_merged", _c_int, _c_void_p, _c_char_p)
_save_merged_gguf = _fn("peft_save_merged_gguf", _c_int, _c_void_p, _c_char_p, _P(_GgufExportOptions))
_save_gguf = _fn("peft_save_adapter_gguf", _c_int, _c_void_p, _c_char_p, _c_char_p)
_convert = _fn("peft_convert_adapter", _c_int, _c_char_p, _c_char_p, _P(_ConvertOptions))
_enable = _fn("peft_adapter_enable", _c_int, _c_void_p, _c_i32)
_tok_open = _fn("peft_tokenizer_open", _c_int, _P(_c_void_p), _c_char_p)
_tok_close = _fn("peft_tokenizer_close", None, _P(_c_void_p))
_tokenize = _fn("peft_tokenize", _c_int, _c_void_p, _c_char_p, ctypes.c_size_t, _c_i32, _i32p, ctypes.c_size_t,
                _P(ctypes.c_size_t))
_detokenize = _fn("peft_detokenize", _c_int, _c_void_p, _i32p, ctypes.c_size_t, _c_i32, _c_char_p,
                  ctypes.c_size_t, _P(ctypes.c_size_t))

TARGETS = {"q": 1, "k": 2, "v": 4, "o": 8, "gate": 16, "up": 32, "down": 64, "embed": 128, "lm_head": 256,
           "qkv": 7, "gate_up": 48}  # Phi-3's qkv_proj and gate_up_proj (any part's bit selects the fused module)
_OPT = {"lr": 1, "beta1": 2, "beta2": 3, "eps": 4, "weight_decay": 5, "grad_clip": 6, "accum_steps": 7,
        "warmup_steps": 8, "total_steps": 9, "schedule": 10, "min_lr_ratio": 11, "loraplus_ratio": 12,
        "embed_lr_ratio": 14, "dropout_call": 15, "embed_weight_decay": 16, "norm_lr_ratio": 17,
        "norm_weight_decay": 18, "activation_checkpointing": 19}
_SCHEDULES = {"constant": 0, "linear": 1, "cosine": 2}
_ERANGE = -11


class Error(Exception):
    """A libpeft failure: .code is the PEFT_E* status, the message the library's."""

    def __init__(self, code, message):
        super().__init__(f"{message} ({_strerror(code).decode()})")
        self.code = code


def _check(rc):
    if rc != 0:
        raise Error(rc, _last_error().decode("utf-8", "replace"))


def version():
    return _version().decode()


def convert_adapter(src, dst, n_heads=0, n_kv_heads=0, n_layers=0, architecture=None, name=None, base_model=None):
    """A LoRA adapter between the formats, without the model: a PEFT directory src becomes the
    GGUF LoRA file dst (llama.cpp's --lora), a GGUF LoRA file src the PEFT directory dst. The
    llama architecture's q/k rows are permuted per head: adapters on q_proj/k_proj need the base's
    n_heads (and n_kv_heads); n_layers lets an adapter on every layer say layers_to_transform null."""
    o = _ConvertOptions(1, n_heads, n_kv_heads, n_layers, _enc(architecture), _enc(name), _enc(base_model))
    _check(_convert(os.fspath(src).encode(), os.fspath(dst).encode(), ctypes.byref(o)))


def _targets(spec):
    if isinstance(spec, int):
        return spec
    bits = 0
    for name in spec.split(",") if isinstance(spec, str) else spec:
        name = name.strip()
        if name in ("all-linear", "all"):
            bits |= 0x7F
            continue
        name = name[:-5] if name.endswith("_proj") else name
        name = "embed" if name == "embed_tokens" else name
        if name not in TARGETS:
            raise ValueError(f"unknown target module {name!r}")
        bits |= TARGETS[name]
    return bits


def _enc(s):
    return None if s is None else s.encode()


def _as_int32(data, what):
    """(ctypes pointer, keep-alive object, n_seq, seq_len) without copying when possible."""
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None and isinstance(data, np.ndarray):
        a = np.ascontiguousarray(data, dtype=np.int32)  # no copy for C-contiguous int32
        if a.ndim == 1:
            a = a.reshape(1, -1)
        if a.ndim != 2:
            raise ValueError(f"{what}: expected B x T token ids")
        return a.ctypes.data_as(_i32p), a, a.shape[0], a.shape[1]
    if isinstance(data, array.array) and data.typecode in ("i", "l") and data.itemsize == 4:
        buf = (_c_i32 * len(data)).from_buffer(data)
        return ctypes.cast(buf, _i32p), (data, buf), 1, len(data)
    rows = [list(data)] if data and isinstance(list(data)[0], int) else [list(r) for r in data]
    t = len(rows[0]) if rows else 0
    if any(len(r) != t for r in rows) or t == 0:
        raise ValueError(f"{what}: rows must be non-empty and of equal length")
    flat = (_c_i32 * (len(rows) * t))(*[x for r in rows for x in r])
    return ctypes.cast(flat, _i32p), flat, len(rows), t


class StepResult:
    def __init__(self, r):
        self.loss, self.grad_norm, self.tokens = r.loss, r.grad_norm, r.tokens
        self.lr, self.updated, self.step = r.lr, bool(r.updated), r.step

    def __repr__(self):
        return f"StepResult(loss={self.loss:.6f}, grad_norm={self.grad_norm:.4f}, tokens={self.tokens}, step={self.step})"


class _Handle:
    """A library handle freed by close(), by `with`, or when garbage-collected."""

    _free = None  # the peft_*_close function of the handle's kind

    def close(self):
        if getattr(self, "_h", None):
            type(self)._free(ctypes.byref(self._h))
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Model(_Handle):
    """A model opened from a Hugging Face directory; owns its handle (use `with`)."""

    _free = _model_close

    def __init__(self, path, threads=0, backend=None, frozen_dtype=None):
        """frozen_dtype: None or "f32" (the weights as read), "bf16" (held in BFloat16)."""
        self._h = _c_void_p()
        opts = _OpenOptions(2, threads, _enc(backend), _enc(frozen_dtype))
        _check(_model_open(ctypes.byref(self._h), os.fspath(path).encode(), ctypes.byref(opts)))


    def _handle(self):
        if not self._h:
            raise Error(-8, "the model is closed")
        return self._h

    @property
    def info(self):
        i = _ModelInfo()
        i.version = 2
        _check(_get_info(self._handle(), ctypes.byref(i)))
        return {f: (getattr(i, f).decode() if isinstance(getattr(i, f), bytes) else getattr(i, f))
                for f, _ in _ModelInfo._fields_ if f != "version"}

    @staticmethod
    def _lora_options(targets, rank, alpha, layers, dropout, rslora, dora, init, seed, rank_pattern, alpha_pattern,
                      variant="lora", modules_to_save=(), norms=(), token_indices=(), target_regex=None,
                      head_token_indices=(), bias="none", exclude_modules=None):
        save = sum({"embed_tokens": 1, "lm_head": 2}[x] for x in modules_to_save)
        nb = sum(_NORMS[x] for x in norms)
        ids = (_c_i32 * len(token_indices))(*token_indices) if token_indices else None
        hids = (_c_i32 * len(head_token_indices))(*head_token_indices) if head_token_indices else None
        if exclude_modules is not None and not isinstance(exclude_modules, str):  # PEFT's list form
            exclude_modules = r"(.*\.)?(" + "|".join(re.escape(x) for x in exclude_modules) + ")"
        o = _LoraOptions(8, 0 if target_regex else _targets(targets), _enc(layers), rank, float(alpha if alpha is not None else 2 * rank),
                         int(rslora), float(dropout), {"kaiming": 0, "gaussian": 1, "pissa": 2, "olora": 3}[init], seed, int(dora),
                         _enc(rank_pattern), _enc(alpha_pattern), _VARIANTS[variant], save, nb,
                         ctypes.cast(ids, ctypes.POINTER(_c_i32)) if ids else None, len(token_indices),
                         _enc(target_regex), ctypes.cast(hids, ctypes.POINTER(_c_i32)) if hids else None,
                         len(head_token_indices), _BIAS[bias], _enc(exclude_modules))
        o._ids, o._hids = ids, hids  # kept alive with the options
        return o

    def attach_lora(self, targets="q,v", rank=8, alpha=None, layers=None, dropout=0.0, rslora=False, dora=False,
                    init="kaiming", seed=0, rank_pattern=None, alpha_pattern=None, variant="lora", modules_to_save=(),
                    norms=(), token_indices=(), target_regex=None, head_token_indices=(), bias="none",
                    exclude_modules=None):
        """Attach LoRA (DoRA with dora=True, LoHa or LoKr with variant="loha"/"lokr"); targets may include "lm_head"
        and "embed_tokens"; modules_to_save: "embed_tokens", "lm_head" trained in full; norms: "input",
        "post_attention", "pre_feedforward", "post_feedforward" (Gemma's), "q_norm", "k_norm" (Qwen3's, Gemma 3's),
        "final" RMSNorm weights trained;
        token_indices: embedding rows trained;
        head_token_indices: rows of an untied lm_head trained; bias: PEFT's "none", "all", "lora_only".
        Returns the exact trainable-parameter count.
        target_regex: PEFT's regex target_modules (replaces targets and layers).
        exclude_modules: PEFT's exclude_modules, a regular expression (str) or module names (a list: each
        leaves out the modules so named or whose names end with "." + it)"""
        o = self._lora_options(targets, rank, alpha, layers, dropout, rslora, dora, init, seed, rank_pattern,
                               alpha_pattern, variant, modules_to_save, norms, token_indices, target_regex,
                               head_token_indices, bias, exclude_modules)
        n = _c_u64()
        _check(_attach_lora(self._handle(), ctypes.byref(o), ctypes.byref(n)))
        return n.value

    def count_lora(self, targets="q,v", rank=8, layers=None, dora=False, rank_pattern=None):
        o = self._lora_options(targets, rank, None, layers, 0.0, False, dora, "kaiming", 0, rank_pattern, None)
        n = _c_u64()
        _check(_count_lora(ctypes.byref(n), self._handle(), ctypes.byref(o)))
        return n.value

    @staticmethod
    def _side(modules_to_save, norms):
        return (sum({"embed_tokens": 1, "lm_head": 2}[x] for x in modules_to_save),
                sum(_NORMS[x] for x in norms))

    def attach_ia3(self, targets="k,v,down", feedforward="down", layers=None, modules_to_save=(), norms=()):
        """IA3; modules_to_save ("embed_tokens", "lm_head") and norms trained alongside as for LoRA."""
        o = _IA3Options(2, _targets(targets), _targets(feedforward), _enc(layers), *self._side(modules_to_save, norms))
        n = _c_u64()
        _check(_attach_ia3(self._handle(), ctypes.byref(o), ctypes.byref(n)))
        return n.value

    def attach_vera(self, targets="q,v", rank=256, d_initial=0.1, layers=None, dropout=0.0, seed=0,
                    modules_to_save=(), norms=()):
        """VeRA: shared frozen random projections, trained scaling vectors; returns the count.
        modules_to_save and norms: trained alongside, as for LoRA."""
        o = _VeraOptions(2, _targets(targets), _enc(layers), rank, d_initial, dropout, seed,
                         *self._side(modules_to_save, norms))
        n = _c_u64()
        _check(_attach_vera(self._handle(), ctypes.byref(o), ctypes.byref(n)))
        return n.value

    def attach_norms(self, layers=None, input=True, post_attention=True, final=True, pre_feedforward=True,
                     post_feedforward=True, q_norm=True, k_norm=True):
        """LN tuning of the RMSNorm weights (pre/post_feedforward: Gemma's; q_norm, k_norm: Qwen3's and Gemma 3's;
        a model without some tunes the others). Returns the count."""
        bits = {"input": input, "post_attention": post_attention, "final": final, "pre_feedforward": pre_feedforward,
                "post_feedforward": post_feedforward, "q_norm": q_norm, "k_norm": k_norm}
        o = _NormsOptions(1, sum(_NORMS[k] for k, on in bits.items() if on), _enc(layers))
        n = _c_u64()
        _check(_attach_norms(self._handle(), ctypes.byref(o), ctypes.byref(n)))
        return n.value

    def attach_prompt(self, n_virtual=8, init="random", init_tokens=(), init_text=None, tokenizer_name_or_path=None,
                      seed=0):
        """Prompt tuning (PEFT PROMPT_TUNING): n_virtual trained rows before every sequence. init "random",
        "text" (init_tokens: the ids of init_text) or "sample_vocab"."""
        ids = (_c_i32 * len(init_tokens))(*init_tokens) if init_tokens else None
        kind = {"random": 0, "text": 1, "sample_vocab": 2}[init]
        o = _PromptOptions(1, n_virtual, kind, ids, len(init_tokens), _enc(init_text), _enc(tokenizer_name_or_path),
                           seed)
        n = _c_u64()
        _check(_attach_prompt(self._handle(), ctypes.byref(o), ctypes.byref(n)))
        return n.value

    def attach_tokens(self, token_ids):
        """Trainable tokens (PEFT TRAINABLE_TOKENS): only these embedding rows are trained."""
        ids = (_c_i32 * len(token_ids))(*token_ids)
        n = _c_u64()
        _check(_attach_tokens(self._handle(), ids, len(token_ids), ctypes.byref(n)))
        return n.value

    def load_named_adapter(self, path, name):
        """Load a saved adapter as the inactive adapter `name` (PEFT's load_adapter)."""
        _check(_adapter_load(self._handle(), _enc(os.fspath(path)), _enc(name)))

    def set_adapter(self, name):
        """Make adapter `name` the active one; None: none active."""
        _check(_adapter_set(self._handle(), _enc(name)))

    def delete_adapter(self, name):
        _check(_adapter_delete(self._handle(), _enc(name)))

    @property
    def adapters(self):
        """(names, active): the adapters' names, the active one first when active is True."""
        n, active = _c_i32(), _c_i32()
        _check(_adapter_list(self._handle(), None, 0, ctypes.byref(n), ctypes.byref(active)))
        names = (_c_char_p * max(n.value, 1))()
        _check(_adapter_list(self._handle(), names, n.value, ctypes.byref(n), ctypes.byref(active)))
        return [names[i].decode() for i in range(n.value)], bool(active.value)

    def combine_adapters(self, names, weights, new_name, combination="cat", svd_rank=0, density=1.0,
                         majority_sign="total", svd_clamp=0.0, seed=0):
        """PEFT's add_weighted_adapter; the result is inactive. combination: one of COMBINATIONS
        ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune" and their
        "_svd" forms); density, majority_sign ("total" or "frequency"), svd_clamp as in PEFT."""
        if combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}")
        if majority_sign not in ("total", "frequency"):
            raise ValueError("majority_sign must be total or frequency")
        o = _CombineOptions(1, COMBINATIONS.index(combination), svd_rank, majority_sign == "frequency", density,
                            svd_clamp, seed)
        arr = (_c_char_p * len(names))(*[_enc(x) for x in names])
        w = (ctypes.c_double * len(weights))(*weights)
        _check(_adapter_combine(self._handle(), arr, w, len(names), _enc(new_name), ctypes.byref(o)))

    def detach(self):
        _check(_detach(self._handle()))

    def set_optimizer(self, **settings):
        """lr, beta1, beta2, eps, weight_decay, grad_clip, accum_steps, warmup_steps, total_steps,
        schedule ("constant", "linear", "cosine"), min_lr_ratio, loraplus_ratio, embed_lr_ratio, embed_weight_decay,
        norm_lr_ratio, norm_weight_decay, activation_checkpointing (0 or 1)."""
        for k, v in settings.items():
            if k not in _OPT:
                raise ValueError(f"unknown optimizer setting {k!r}")
            if k == "schedule" and isinstance(v, str):
                v = _SCHEDULES[v]
            _check(_opt_set(self._handle(), _OPT[k], float(v)))

    def get_optimizer(self, key):
        v = _c_double()
        _check(_opt_get(self._handle(), _OPT[key], ctypes.byref(v)))
        return v.value

    def _batch(self, tokens, labels):
        tp, keep_t, b, t = _as_int32(tokens, "tokens")
        lp, keep_l = None, None
        if labels is not None:
            lp, keep_l, lb, lt = _as_int32(labels, "labels")
            if (lb, lt) != (b, t):
                raise ValueError("labels must have the shape of tokens")
        return _Batch(2, tp, lp, b, t, None), (keep_t, keep_l)

    def step(self, tokens, labels=None):
        """Forward + backward + AdamW update (every accum_steps calls). labels: -100 = ignored."""
        batch, keep = self._batch(tokens, labels)
        r = _StepResult()
        r.version = 1
        _check(_step(self._handle(), ctypes.byref(batch), ctypes.byref(r)))
        return StepResult(r)

    def eval(self, tokens, labels=None):
        """(summed loss in nats, counted tokens) of a batch, nothing updated."""
        batch, keep = self._batch(tokens, labels)
        r = _EvalResult()
        r.version = 1
        _check(_eval(self._handle(), ctypes.byref(batch), ctypes.byref(r)))
        return r.loss_sum, r.tokens

    def save_merged_gguf(self, path, type="same", name=None):
        """Base + adapter as a GGUF file for llama.cpp: from a GGUF base its keys and unchanged tensors
        copied; from a Hugging Face directory the converter's keys and its tokenizer's vocabulary;
        changed tensors in the base's type ("same") or every matrix as f32, f16, bf16, q8_0, q4_0,
        q4_k, q6_k."""
        o = _GgufExportOptions(1, _GGUF_TYPES[type], _enc(name))
        _check(_save_merged_gguf(self._handle(), os.fspath(path).encode(), ctypes.byref(o)))

    def save_adapter_gguf(self, path, name=None):
        """The attached LoRA adapter as a GGUF LoRA file for llama.cpp's --lora."""
        _check(_save_gguf(self._handle(), os.fspath(path).encode(), _enc(name)))

    def save_adapter(self, path, convert_to_lora=False):
        """A Hugging Face PEFT directory; convert_to_lora: a PiSSA/OLoRA adapter as the plain LoRA
        (twice the rank) that applies to the original base."""
        o = _SaveOptions(2, None, int(convert_to_lora))
        _check(_save(self._handle(), os.fspath(path).encode(), ctypes.byref(o)))

    def load_adapter(self, path):
        _check(_load_ad(self._handle(), os.fspath(path).encode()))

    def merge(self):
        _check(_merge(self._handle()))

    def unmerge(self):
        _check(_unmerge(self._handle()))

    def save_merged(self, path):
        _check(_save_merged(self._handle(), os.fspath(path).encode()))

    def enable_adapter(self, enabled=True):
        _check(_enable(self._handle(), int(enabled)))


class Tokenizer(_Handle):
    """A Hugging Face tokenizer.json (or a model directory holding one)."""

    _free = _tok_close

    def __init__(self, path):
        self._h = _c_void_p()
        _check(_tok_open(ctypes.byref(self._h), os.fspath(path).encode()))


    def encode(self, text, bos=None, eos=False):
        data = text.encode("utf-8")
        flags = (0 if bos is None else 1 if bos else 2) | (4 if eos else 0)
        n = ctypes.c_size_t()
        cap = len(data) + 4
        buf = (_c_i32 * cap)()
        rc = _tokenize(self._h, data, len(data), flags, buf, cap, ctypes.byref(n))
        if rc == _ERANGE:
            cap = n.value
            buf = (_c_i32 * cap)()
            rc = _tokenize(self._h, data, len(data), flags, buf, cap, ctypes.byref(n))
        _check(rc)
        return list(buf[: n.value])

    def decode(self, ids):
        arr = (_c_i32 * len(ids))(*ids)
        n = ctypes.c_size_t()
        rc = _detokenize(self._h, arr, len(ids), 0, None, 0, ctypes.byref(n))
        if rc not in (0, _ERANGE):
            _check(rc)
        out = ctypes.create_string_buffer(n.value + 1)
        _check(_detokenize(self._h, arr, len(ids), 0, out, n.value + 1, ctypes.byref(n)))
        return out.raw[: n.value].decode("utf-8", "replace")
