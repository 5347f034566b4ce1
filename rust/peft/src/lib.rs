//! Safe Rust bindings to libpeft: open a Llama-family model, attach LoRA (or DoRA, LoHa,
//! LoKr, IA3, VeRA, norm tuning), train it from your own data loop, and save an adapter
//! that Hugging Face PEFT loads.
//!
//! ```no_run
//! use peft::{Batch, LoraOptions, Model, Opt, target};
//! let mut model = Model::open("tests/data/tiny")?;
//! let n = model.attach_lora(&LoraOptions { targets: target::ALL_LINEAR, rank: 8, ..LoraOptions::default() })?;
//! model.set(Opt::Lr, 1e-3)?;
//! let tokens = vec![1i32; 4 * 32];
//! let r = model.step(&Batch::new(&tokens, 4, 32)?)?;
//! println!("{} trainable parameters, loss {}", n, r.loss);
//! model.save_adapter("out/adapter")?;
//! # Ok::<(), peft::Error>(())
//! ```
//!
//! Every fallible call returns [`Result`], whose [`Error`] carries the library's status
//! code and its message. Handles free themselves on drop. A [`Model`] may move to another
//! thread (`Send`); it is not shared between threads at once (the library's handles are not).
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

pub use peft_sys as sys;

/// The kind of a failure, from the library's pinned status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    OutOfMemory,
    Io,
    Format,
    Unsupported,
    Shape,
    NotFound,
    State,
    Numeric,
    Backend,
    Range,
    Other,
}

/// A failed call: the status code and the library's message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self.code {
            sys::PEFT_EINVAL => ErrorKind::InvalidArgument,
            sys::PEFT_ENOMEM => ErrorKind::OutOfMemory,
            sys::PEFT_EIO => ErrorKind::Io,
            sys::PEFT_EFORMAT => ErrorKind::Format,
            sys::PEFT_EUNSUPPORTED => ErrorKind::Unsupported,
            sys::PEFT_ESHAPE => ErrorKind::Shape,
            sys::PEFT_ENOTFOUND => ErrorKind::NotFound,
            sys::PEFT_ESTATE => ErrorKind::State,
            sys::PEFT_ENUMERIC => ErrorKind::Numeric,
            sys::PEFT_EBACKEND => ErrorKind::Backend,
            sys::PEFT_ERANGE => ErrorKind::Range,
            _ => ErrorKind::Other,
        }
    }

    fn invalid(message: String) -> Error {
        Error { code: sys::PEFT_EINVAL, message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = unsafe { CStr::from_ptr(sys::peft_strerror(self.code)) };
        write!(f, "{} ({})", self.message, what.to_string_lossy())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn check(code: c_int) -> Result<()> {
    if code == sys::PEFT_OK {
        return Ok(());
    }
    let msg = unsafe { CStr::from_ptr(sys::peft_last_error()) };
    Err(Error { code, message: msg.to_string_lossy().into_owned() })
}

fn c_string(s: &[u8], what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("{} contains a NUL byte", what)))
}

fn c_path(p: &Path) -> Result<CString> {
    c_string(p.as_os_str().as_bytes(), "path")
}

fn opt_c(s: &Option<String>, what: &str) -> Result<Option<CString>> {
    s.as_ref().map(|v| c_string(v.as_bytes(), what)).transpose()
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(ptr::null(), |c| c.as_ptr())
}

fn fixed_str(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The library version at run time, "MAJOR.MINOR.PATCH".
pub fn version() -> String {
    unsafe { CStr::from_ptr(sys::peft_version()) }.to_string_lossy().into_owned()
}

/// The tensor type of [`Model::save_merged_gguf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    /// Each tensor as the base stores it.
    Same = -1,
    F32 = 0,
    F16 = 1,
    BF16 = 30,
    Q4_0 = 2,
    Q8_0 = 8,
    /// K-quants: rows of a multiple of 256 (others are written as Q8_0).
    Q4_K = 12,
    Q6_K = 14,
}

/// How [`convert_adapter`] reads or writes the formats.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// The base model's attention heads and key/value heads (0: as `n_heads`): the llama
    /// architecture's q/k rows are permuted per head, so adapters on q/k need them.
    pub n_heads: i32,
    pub n_kv_heads: i32,
    /// The base model's layers (0: unknown; a PEFT output then lists its layers).
    pub n_layers: i32,
    /// GGUF `general.architecture` written, or required of a GGUF input (None: "llama" / any).
    pub architecture: Option<String>,
    /// GGUF `general.name` of a GGUF output.
    pub name: Option<String>,
    /// `base_model_name_or_path` of a PEFT output (None: the GGUF's `general.name`).
    pub base_model: Option<String>,
}

/// Convert a LoRA adapter without the model: a PEFT directory `src` becomes the GGUF LoRA
/// file `dst` (llama.cpp's `--lora`); a GGUF LoRA file `src` becomes the PEFT directory `dst`.
pub fn convert_adapter<P: AsRef<Path>, Q: AsRef<Path>>(src: P, dst: Q, opts: &ConvertOptions) -> Result<()> {
    let s = c_path(src.as_ref())?;
    let d = c_path(dst.as_ref())?;
    let arch = opt_c(&opts.architecture, "architecture")?;
    let name = opt_c(&opts.name, "name")?;
    let base = opt_c(&opts.base_model, "base_model")?;
    let o = sys::peft_convert_options {
        version: sys::PEFT_CONVERT_OPTIONS_VERSION as i32,
        n_heads: opts.n_heads,
        n_kv_heads: opts.n_kv_heads,
        n_layers: opts.n_layers,
        architecture: opt_ptr(&arch),
        name: opt_ptr(&name),
        base_model: opt_ptr(&base),
    };
    check(unsafe { sys::peft_convert_adapter(s.as_ptr(), d.as_ptr(), &o) })
}

/// Target-module bits for [`LoraOptions::targets`] and the other methods.
pub mod target {
    use super::sys;
    pub const Q: u32 = sys::PEFT_TARGET_Q;
    pub const K: u32 = sys::PEFT_TARGET_K;
    pub const V: u32 = sys::PEFT_TARGET_V;
    pub const O: u32 = sys::PEFT_TARGET_O;
    pub const GATE: u32 = sys::PEFT_TARGET_GATE;
    pub const UP: u32 = sys::PEFT_TARGET_UP;
    pub const DOWN: u32 = sys::PEFT_TARGET_DOWN;
    pub const ALL_LINEAR: u32 = sys::PEFT_TARGET_ALL_LINEAR;
    /// Phi-3's fused `qkv_proj` (any of q, k, v selects it).
    pub const QKV: u32 = Q | K | V;
    /// Phi-3's fused `gate_up_proj` (gate or up selects it).
    pub const GATE_UP: u32 = GATE | UP;
    /// LoRA on the token embeddings (PEFT's `embed_tokens`).
    pub const EMBED: u32 = sys::PEFT_TARGET_EMBED;
    /// LoRA on the output projection (PEFT's `lm_head`).
    pub const LM_HEAD: u32 = sys::PEFT_TARGET_LM_HEAD;
}

/// Bits for [`LoraOptions::modules_to_save`]: modules trained in full.
pub mod save {
    use super::sys;
    pub const EMBED: u32 = sys::PEFT_SAVE_EMBED;
    pub const LM_HEAD: u32 = sys::PEFT_SAVE_LM_HEAD;
}

/// Norm bits for [`NormsOptions::norms`].
pub mod norm {
    use super::sys;
    pub const INPUT: u32 = sys::PEFT_NORM_INPUT;
    pub const POST_ATTENTION: u32 = sys::PEFT_NORM_POST_ATTENTION;
    pub const FINAL: u32 = sys::PEFT_NORM_FINAL;
    /// Gemma 2 and 3: `pre_feedforward_layernorm`.
    pub const PRE_FEEDFORWARD: u32 = sys::PEFT_NORM_PRE_FEEDFORWARD;
    /// Gemma 2 and 3: `post_feedforward_layernorm`.
    pub const POST_FEEDFORWARD: u32 = sys::PEFT_NORM_POST_FEEDFORWARD;
    /// Qwen3 and Gemma 3: self_attn.q_norm and self_attn.k_norm (head_dim, every head).
    pub const Q: u32 = sys::PEFT_NORM_Q;
    pub const K: u32 = sys::PEFT_NORM_K;
    /// Every norm the model has.
    pub const ALL: u32 = sys::PEFT_NORM_ALL;
}

/// The form of a low-rank update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// delta W = s B A
    Lora,
    /// LoHa: a Hadamard product of two rank-r products (PEFT "LOHA").
    Loha,
    /// LoKr: a Kronecker product with a low-rank factor (PEFT "LOKR").
    Lokr,
}

/// PEFT's bias option: which of the model's biases are trained alongside the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    /// None (frozen).
    None,
    /// Every bias of the model.
    All,
    /// The biases of the adapted modules.
    LoraOnly,
}

/// Initialisation of LoRA's factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// PEFT's default: A kaiming-uniform, B zero.
    Kaiming,
    /// A ~ N(0, 1/r), B zero.
    Gaussian,
    /// PiSSA: the principal singular part of each weight; the base becomes the residual.
    Pissa,
    /// OLoRA: the first r columns of each weight's QR decomposition; residual base.
    Olora,
}

/// Options of model opening.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Worker threads; 0: the CPUs this process may run on (its affinity mask).
    pub threads: i32,
    /// "cpu" (default) or "blis".
    pub backend: Option<String>,
    /// How the frozen float32 weights are held: None or "f32" (as read), "bf16" (half the memory).
    pub frozen_dtype: Option<String>,
}

/// LoRA and its variants (DoRA, LoHa, LoKr); `Default` is the library's default
/// (q and v, rank 8, alpha 16, kaiming init).
#[derive(Debug, Clone)]
pub struct LoraOptions {
    pub targets: u32,
    /// "all", "0,3,5", "2-7", "first:N", "last:N", "every:K"; None: all layers.
    pub layers: Option<String>,
    pub rank: i32,
    pub alpha: f32,
    pub rslora: bool,
    pub dropout: f32,
    pub init: Init,
    pub seed: u64,
    pub dora: bool,
    /// PEFT's rank_pattern, "KEY=R,...".
    pub rank_pattern: Option<String>,
    /// PEFT's alpha_pattern, "KEY=A,...".
    pub alpha_pattern: Option<String>,
    pub variant: Variant,
    /// PEFT_SAVE_* bits: embeddings and/or lm_head trained in full (PEFT's modules_to_save).
    pub modules_to_save: u32,
    /// PEFT_NORM_* bits: RMSNorm weights trained alongside (saved as modules_to_save).
    pub norms: u32,
    /// PEFT's trainable_token_indices: rows of the embeddings trained.
    pub token_indices: Vec<i32>,
    /// PEFT's trainable_token_indices {"lm_head": [...]}: rows of an untied lm_head trained.
    pub head_token_indices: Vec<i32>,
    /// PEFT's regex target_modules (re.fullmatch over module names); with it, `targets` must be
    /// 0 and `layers` None.
    pub target_regex: Option<String>,
    /// PEFT's bias option (LoRA and DoRA).
    pub bias: Bias,
    /// PEFT's exclude_modules as a regular expression (re.fullmatch over module names): the
    /// modules it matches are left out of what the targets select.
    pub exclude_regex: Option<String>,
}

impl Default for LoraOptions {
    fn default() -> Self {
        let mut raw: sys::peft_lora_options = unsafe { std::mem::zeroed() };
        unsafe { sys::peft_lora_options_init(&mut raw, sys::PEFT_LORA_OPTIONS_VERSION) };
        LoraOptions {
            targets: raw.targets,
            layers: None,
            rank: raw.rank,
            alpha: raw.alpha,
            rslora: raw.use_rslora != 0,
            dropout: raw.dropout,
            init: if raw.init == sys::PEFT_INIT_GAUSSIAN as i32 { Init::Gaussian } else { Init::Kaiming },
            seed: raw.seed,
            dora: raw.use_dora != 0,
            rank_pattern: None,
            alpha_pattern: None,
            variant: Variant::Lora,
            modules_to_save: 0,
            norms: 0,
            token_indices: Vec::new(),
            head_token_indices: Vec::new(),
            target_regex: None,
            bias: Bias::None,
            exclude_regex: None,
        }
    }
}

/// The C struct and the strings it points into (kept alive together).
struct RawLora {
    raw: sys::peft_lora_options,
    _strings: [Option<CString>; 5],
    _tokens: Vec<i32>,
    _head_tokens: Vec<i32>,
}

impl LoraOptions {
    fn to_raw(&self) -> Result<RawLora> {
        let strings = [
            opt_c(&self.layers, "layers")?,
            opt_c(&self.rank_pattern, "rank_pattern")?,
            opt_c(&self.alpha_pattern, "alpha_pattern")?,
            opt_c(&self.target_regex, "target_regex")?,
            opt_c(&self.exclude_regex, "exclude_regex")?,
        ];
        let tokens = self.token_indices.clone();
        let head_tokens = self.head_token_indices.clone();
        if tokens.len() > i32::MAX as usize || head_tokens.len() > i32::MAX as usize {
            return Err(Error::invalid("too many token indices".into()));
        }
        let raw = sys::peft_lora_options {
            version: sys::PEFT_LORA_OPTIONS_VERSION,
            targets: self.targets,
            layers: opt_ptr(&strings[0]),
            rank: self.rank,
            alpha: self.alpha,
            use_rslora: self.rslora as i32,
            dropout: self.dropout,
            init: match self.init {
                Init::Kaiming => sys::PEFT_INIT_KAIMING as i32,
                Init::Gaussian => sys::PEFT_INIT_GAUSSIAN as i32,
                Init::Pissa => sys::PEFT_INIT_PISSA as i32,
                Init::Olora => sys::PEFT_INIT_OLORA as i32,
            },
            seed: self.seed,
            use_dora: self.dora as i32,
            rank_pattern: opt_ptr(&strings[1]),
            alpha_pattern: opt_ptr(&strings[2]),
            variant: match self.variant {
                Variant::Lora => sys::PEFT_VARIANT_LORA as i32,
                Variant::Loha => sys::PEFT_VARIANT_LOHA as i32,
                Variant::Lokr => sys::PEFT_VARIANT_LOKR as i32,
            },
            modules_to_save: self.modules_to_save,
            norms: self.norms,
            token_indices: if tokens.is_empty() { std::ptr::null() } else { tokens.as_ptr() },
            n_token_indices: tokens.len() as i32,
            target_regex: opt_ptr(&strings[3]),
            head_token_indices: if head_tokens.is_empty() { std::ptr::null() } else { head_tokens.as_ptr() },
            n_head_token_indices: head_tokens.len() as i32,
            bias: match self.bias {
                Bias::None => sys::PEFT_BIAS_NONE as i32,
                Bias::All => sys::PEFT_BIAS_ALL as i32,
                Bias::LoraOnly => sys::PEFT_BIAS_LORA_ONLY as i32,
            },
            exclude_regex: opt_ptr(&strings[4]),
        };
        Ok(RawLora { raw, _strings: strings, _tokens: tokens, _head_tokens: head_tokens })
    }
}

/// IA3 (PEFT "IA3"): learned scaling vectors.
#[derive(Debug, Clone)]
pub struct Ia3Options {
    pub targets: u32,
    /// The subset of targets whose input (not output) is scaled.
    pub feedforward: u32,
    pub layers: Option<String>,
    /// PEFT_SAVE_* bits trained in full alongside (PEFT's modules_to_save).
    pub modules_to_save: u32,
    /// PEFT_NORM_* bits: RMSNorm weights trained alongside.
    pub norms: u32,
}

impl Default for Ia3Options {
    fn default() -> Self {
        Ia3Options {
            targets: target::K | target::V | target::DOWN,
            feedforward: target::DOWN,
            layers: None,
            modules_to_save: 0,
            norms: 0,
        }
    }
}

/// VeRA (PEFT "VERA"): shared frozen random projections, trained scaling vectors.
#[derive(Debug, Clone)]
pub struct VeraOptions {
    pub targets: u32,
    pub layers: Option<String>,
    pub rank: i32,
    pub d_initial: f32,
    pub dropout: f32,
    pub seed: u64,
    /// As for IA3: trained in full alongside, and RMSNorm weights.
    pub modules_to_save: u32,
    pub norms: u32,
}

impl Default for VeraOptions {
    fn default() -> Self {
        VeraOptions {
            targets: target::Q | target::V,
            layers: None,
            rank: 256,
            d_initial: 0.1,
            dropout: 0.0,
            seed: 0,
            modules_to_save: 0,
            norms: 0,
        }
    }
}

/// Norm tuning (PEFT "LN_TUNING"): the RMSNorm weights are trained.
#[derive(Debug, Clone)]
pub struct NormsOptions {
    pub norms: u32,
    pub layers: Option<String>,
}

impl Default for NormsOptions {
    fn default() -> Self {
        NormsOptions { norms: norm::ALL, layers: None }
    }
}

/// How a soft prompt starts (PEFT's prompt_tuning_init).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptInit {
    /// N(0, 1) rows ("RANDOM").
    Random,
    /// The embeddings of `init_tokens`, repeated or cut ("TEXT").
    Text,
    /// The embeddings of uniformly drawn tokens ("SAMPLE_VOCAB").
    SampleVocab,
}

/// Prompt tuning (PEFT "PROMPT_TUNING"): `n_virtual` trained rows before every sequence.
#[derive(Debug, Clone)]
pub struct PromptOptions {
    pub n_virtual: i32,
    pub init: PromptInit,
    /// The token ids of `init_text` (PromptInit::Text).
    pub init_tokens: Vec<i32>,
    /// Saved as prompt_tuning_init_text.
    pub init_text: Option<String>,
    /// Saved as tokenizer_name_or_path.
    pub tokenizer_name_or_path: Option<String>,
    pub seed: u64,
}

impl Default for PromptOptions {
    fn default() -> Self {
        PromptOptions {
            n_virtual: 8,
            init: PromptInit::Random,
            init_tokens: Vec::new(),
            init_text: None,
            tokenizer_name_or_path: None,
            seed: 0,
        }
    }
}

/// How peft_adapter_combine weighs LoRA adapters (PEFT's add_weighted_adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// Sums of the factors scaled by sqrt(w s): one rank, weights >= 0.
    Linear,
    /// The factors stacked: exactly the weighted sum of the deltas.
    Cat,
    /// The weighted sum of the deltas truncated by its SVD.
    Svd,
    /// TIES on the factors (as Linear): magnitude pruning, sign election, disjoint mean.
    Ties,
    /// TIES on the deltas, then truncated as Svd.
    TiesSvd,
    /// DARE on the factors: random pruning rescaled by 1/density, then Linear.
    DareLinear,
    DareLinearSvd,
    /// DARE pruning, then TIES' sign election and disjoint mean.
    DareTies,
    DareTiesSvd,
    /// Magnitude pruning, then Linear.
    MagnitudePrune,
    MagnitudePruneSvd,
}

impl Combination {
    fn raw(self) -> i32 {
        (match self {
            Combination::Linear => sys::PEFT_COMBINE_LINEAR,
            Combination::Cat => sys::PEFT_COMBINE_CAT,
            Combination::Svd => sys::PEFT_COMBINE_SVD,
            Combination::Ties => sys::PEFT_COMBINE_TIES,
            Combination::TiesSvd => sys::PEFT_COMBINE_TIES_SVD,
            Combination::DareLinear => sys::PEFT_COMBINE_DARE_LINEAR,
            Combination::DareLinearSvd => sys::PEFT_COMBINE_DARE_LINEAR_SVD,
            Combination::DareTies => sys::PEFT_COMBINE_DARE_TIES,
            Combination::DareTiesSvd => sys::PEFT_COMBINE_DARE_TIES_SVD,
            Combination::MagnitudePrune => sys::PEFT_COMBINE_MAGNITUDE_PRUNE,
            Combination::MagnitudePruneSvd => sys::PEFT_COMBINE_MAGNITUDE_PRUNE_SVD,
        }) as i32
    }
}

/// Every add_weighted_adapter setting (peft_adapter_combine_ex).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CombineOptions {
    pub how: Combination,
    /// svd family: the new rank; 0: the largest source rank.
    pub svd_rank: i32,
    /// ties, dare, magnitude_prune: the fraction of values kept (1: no pruning).
    pub density: f64,
    /// ties family: the majority sign by count ("frequency") instead of by sum ("total").
    pub majority_by_frequency: bool,
    /// svd family: clamp to this quantile of the factors' values; 0: none.
    pub svd_clamp: f64,
    /// dare: the random masks' seed.
    pub seed: u64,
}

impl Default for CombineOptions {
    fn default() -> Self {
        CombineOptions { how: Combination::Svd, svd_rank: 0, density: 1.0, majority_by_frequency: false,
                         svd_clamp: 0.0, seed: 0 }
    }
}

/// Optimizer settings (AdamW and its schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    Lr,
    Beta1,
    Beta2,
    Eps,
    WeightDecay,
    GradClip,
    AccumSteps,
    WarmupSteps,
    TotalSteps,
    /// 0 constant, 1 linear, 2 cosine.
    Schedule,
    MinLrRatio,
    LoraplusRatio,
    /// Read-only: optimizer updates done.
    Step,
    EmbedLrRatio,
    DropoutCall,
    /// Weight decay of the embedding group; -1: the main one.
    EmbedWeightDecay,
    NormLrRatio,
    /// Weight decay of tuned norms; -1: the main one.
    NormWeightDecay,
    /// 1: keep only each layer's input, recompute its activations in the backward pass.
    ActivationCheckpointing,
}

impl Opt {
    fn key(self) -> c_int {
        (match self {
            Opt::Lr => sys::PEFT_OPT_LR,
            Opt::Beta1 => sys::PEFT_OPT_BETA1,
            Opt::Beta2 => sys::PEFT_OPT_BETA2,
            Opt::Eps => sys::PEFT_OPT_EPS,
            Opt::WeightDecay => sys::PEFT_OPT_WEIGHT_DECAY,
            Opt::GradClip => sys::PEFT_OPT_GRAD_CLIP,
            Opt::AccumSteps => sys::PEFT_OPT_ACCUM_STEPS,
            Opt::WarmupSteps => sys::PEFT_OPT_WARMUP_STEPS,
            Opt::TotalSteps => sys::PEFT_OPT_TOTAL_STEPS,
            Opt::Schedule => sys::PEFT_OPT_SCHEDULE,
            Opt::MinLrRatio => sys::PEFT_OPT_MIN_LR_RATIO,
            Opt::LoraplusRatio => sys::PEFT_OPT_LORAPLUS_RATIO,
            Opt::Step => sys::PEFT_OPT_STEP,
            Opt::EmbedLrRatio => sys::PEFT_OPT_EMBED_LR_RATIO,
            Opt::DropoutCall => sys::PEFT_OPT_DROPOUT_CALL,
            Opt::EmbedWeightDecay => sys::PEFT_OPT_EMBED_WEIGHT_DECAY,
            Opt::NormLrRatio => sys::PEFT_OPT_NORM_LR_RATIO,
            Opt::NormWeightDecay => sys::PEFT_OPT_NORM_WEIGHT_DECAY,
            Opt::ActivationCheckpointing => sys::PEFT_OPT_ACTIVATION_CHECKPOINTING,
        }) as c_int
    }
}

/// A batch of `n_seq` rows of `seq_len` token ids, borrowed from the host (not copied).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    tokens: &'a [i32],
    labels: Option<&'a [i32]>,
    seq_ids: Option<&'a [i32]>,
    n_seq: i32,
    seq_len: i32,
}

impl<'a> Batch<'a> {
    /// `tokens` holds `n_seq * seq_len` ids, row-major.
    pub fn new(tokens: &'a [i32], n_seq: usize, seq_len: usize) -> Result<Batch<'a>> {
        if n_seq == 0 || seq_len == 0 || n_seq.checked_mul(seq_len) != Some(tokens.len()) || tokens.len() > i32::MAX as usize {
            return Err(Error::invalid(format!("batch: {} tokens are not {} x {}", tokens.len(), n_seq, seq_len)));
        }
        Ok(Batch { tokens, labels: None, seq_ids: None, n_seq: n_seq as i32, seq_len: seq_len as i32 })
    }

    /// Labels to train on instead of the tokens (-100: not trained on).
    pub fn with_labels(mut self, labels: &'a [i32]) -> Result<Batch<'a>> {
        if labels.len() != self.tokens.len() {
            return Err(Error::invalid(format!("batch: {} labels for {} tokens", labels.len(), self.tokens.len())));
        }
        self.labels = Some(labels);
        Ok(self)
    }

    /// Document ids of packed sequences (attention stops at each change of id).
    pub fn with_seq_ids(mut self, seq_ids: &'a [i32]) -> Result<Batch<'a>> {
        if seq_ids.len() != self.tokens.len() {
            return Err(Error::invalid(format!("batch: {} document ids for {} tokens", seq_ids.len(), self.tokens.len())));
        }
        self.seq_ids = Some(seq_ids);
        Ok(self)
    }

    fn raw(&self) -> sys::peft_batch {
        sys::peft_batch {
            version: sys::PEFT_BATCH_VERSION,
            tokens: self.tokens.as_ptr(),
            labels: self.labels.map_or(ptr::null(), |l| l.as_ptr()),
            n_seq: self.n_seq,
            seq_len: self.seq_len,
            seq_ids: self.seq_ids.map_or(ptr::null(), |s| s.as_ptr()),
        }
    }
}

/// What a training call reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// Mean cross-entropy over the counted tokens of the batch.
    pub loss: f64,
    pub tokens: u64,
    pub grad_norm: f64,
    pub lr: f64,
    /// Whether this call applied an optimizer update.
    pub updated: bool,
    /// Optimizer updates so far.
    pub step: i64,
}

fn raw_step_result() -> sys::peft_step_result {
    let mut r: sys::peft_step_result = unsafe { std::mem::zeroed() };
    r.version = sys::PEFT_STEP_RESULT_VERSION;
    r
}

impl From<sys::peft_step_result> for StepResult {
    fn from(r: sys::peft_step_result) -> Self {
        StepResult {
            loss: r.loss,
            tokens: r.tokens,
            grad_norm: r.grad_norm,
            lr: r.lr,
            updated: r.updated != 0,
            step: r.step,
        }
    }
}

/// Evaluation of a batch: the sum of token losses and the count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub loss_sum: f64,
    pub tokens: u64,
}

impl EvalResult {
    pub fn mean_loss(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.loss_sum / self.tokens as f64
        }
    }
}

/// What a model is.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub architecture: String,
    pub n_layers: i32,
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub head_dim: i32,
    pub vocab_size: i32,
    pub tied_embeddings: bool,
    pub n_params: u64,
    pub n_trainable: u64,
    pub backend: String,
    pub n_threads: i32,
    pub weights_dtype: String,
    /// The attachment's PEFT peft_type ("LORA", "PROMPT_TUNING", ...; empty when none).
    pub adapter_type: String,
    /// Virtual tokens a prompt-tuning attachment puts before each sequence.
    pub n_virtual_tokens: i32,
}

/// A base model (Hugging Face directory or GGUF file) and its attached adapter.
pub struct Model {
    raw: *mut sys::peft_model,
}

// A handle may move between threads; the library keeps no thread-bound state in it
// (the error message is per thread, read right after the failing call).
unsafe impl Send for Model {}

impl Model {
    pub fn open<P: AsRef<Path>>(path: P) -> Result<Model> {
        Model::open_with(path, &OpenOptions::default())
    }

    pub fn open_with<P: AsRef<Path>>(path: P, opts: &OpenOptions) -> Result<Model> {
        let cpath = c_path(path.as_ref())?;
        let backend = opt_c(&opts.backend, "backend")?;
        let frozen_dtype = opt_c(&opts.frozen_dtype, "frozen_dtype")?;
        let mut o: sys::peft_open_options = unsafe { std::mem::zeroed() };
        check(unsafe { sys::peft_open_options_init(&mut o, sys::PEFT_OPEN_OPTIONS_VERSION) })?;
        o.n_threads = opts.threads;
        o.backend = opt_ptr(&backend);
        o.frozen_dtype = opt_ptr(&frozen_dtype);
        let mut raw = ptr::null_mut();
        check(unsafe { sys::peft_model_open(&mut raw, cpath.as_ptr(), &o) })?;
        Ok(Model { raw })
    }

    pub fn info(&self) -> ModelInfo {
        let mut i: sys::peft_model_info = unsafe { std::mem::zeroed() };
        i.version = sys::PEFT_MODEL_INFO_VERSION;
        unsafe { sys::peft_model_get_info(self.raw, &mut i) };
        ModelInfo {
            architecture: fixed_str(&i.architecture),
            n_layers: i.n_layers,
            hidden_size: i.hidden_size,
            intermediate_size: i.intermediate_size,
            n_heads: i.n_heads,
            n_kv_heads: i.n_kv_heads,
            head_dim: i.head_dim,
            vocab_size: i.vocab_size,
            tied_embeddings: i.tied_embeddings != 0,
            n_params: i.n_params,
            n_trainable: i.n_trainable,
            backend: fixed_str(&i.backend),
            n_threads: i.n_threads,
            weights_dtype: fixed_str(&i.weights_dtype),
            adapter_type: fixed_str(&i.adapter_type),
            n_virtual_tokens: i.n_virtual_tokens,
        }
    }

    /// Attach LoRA (or DoRA, LoHa, LoKr); returns the exact trainable-parameter count.
    pub fn attach_lora(&mut self, opts: &LoraOptions) -> Result<u64> {
        let o = opts.to_raw()?;
        let mut n = 0u64;
        check(unsafe { sys::peft_attach_lora(self.raw, &o.raw, &mut n) })?;
        Ok(n)
    }

    /// The trainable-parameter count of a configuration, without attaching it.
    pub fn count_lora(&self, opts: &LoraOptions) -> Result<u64> {
        let o = opts.to_raw()?;
        let mut n = 0u64;
        check(unsafe { sys::peft_count_lora(&mut n, self.raw, &o.raw) })?;
        Ok(n)
    }

    pub fn attach_ia3(&mut self, opts: &Ia3Options) -> Result<u64> {
        let layers = opt_c(&opts.layers, "layers")?;
        let o = sys::peft_ia3_options {
            version: sys::PEFT_IA3_OPTIONS_VERSION,
            targets: opts.targets,
            feedforward: opts.feedforward,
            layers: opt_ptr(&layers),
            modules_to_save: opts.modules_to_save,
            norms: opts.norms,
        };
        let mut n = 0u64;
        check(unsafe { sys::peft_attach_ia3(self.raw, &o, &mut n) })?;
        Ok(n)
    }

    pub fn attach_vera(&mut self, opts: &VeraOptions) -> Result<u64> {
        let layers = opt_c(&opts.layers, "layers")?;
        let o = sys::peft_vera_options {
            version: sys::PEFT_VERA_OPTIONS_VERSION,
            targets: opts.targets,
            layers: opt_ptr(&layers),
            rank: opts.rank,
            d_initial: opts.d_initial,
            dropout: opts.dropout,
            seed: opts.seed,
            modules_to_save: opts.modules_to_save,
            norms: opts.norms,
        };
        let mut n = 0u64;
        check(unsafe { sys::peft_attach_vera(self.raw, &o, &mut n) })?;
        Ok(n)
    }

    pub fn attach_norms(&mut self, opts: &NormsOptions) -> Result<u64> {
        let layers = opt_c(&opts.layers, "layers")?;
        let o = sys::peft_norms_options {
            version: sys::PEFT_NORMS_OPTIONS_VERSION,
            norms: opts.norms,
            layers: opt_ptr(&layers),
        };
        let mut n = 0u64;
        check(unsafe { sys::peft_attach_norms(self.raw, &o, &mut n) })?;
        Ok(n)
    }

    /// Attach a soft prompt; returns the trainable-parameter count (n_virtual x hidden).
    pub fn attach_prompt(&mut self, opts: &PromptOptions) -> Result<u64> {
        let text = opt_c(&opts.init_text, "init_text")?;
        let tokenizer = opt_c(&opts.tokenizer_name_or_path, "tokenizer_name_or_path")?;
        let o = sys::peft_prompt_options {
            version: sys::PEFT_PROMPT_OPTIONS_VERSION,
            n_virtual: opts.n_virtual,
            init: match opts.init {
                PromptInit::Random => sys::PEFT_PROMPT_INIT_RANDOM,
                PromptInit::Text => sys::PEFT_PROMPT_INIT_TEXT,
                PromptInit::SampleVocab => sys::PEFT_PROMPT_INIT_SAMPLE_VOCAB,
            } as i32,
            init_tokens: if opts.init_tokens.is_empty() { ptr::null() } else { opts.init_tokens.as_ptr() },
            n_init_tokens: opts.init_tokens.len() as i32,
            init_text: opt_ptr(&text),
            tokenizer_name_or_path: opt_ptr(&tokenizer),
            seed: opts.seed,
        };
        let mut n = 0u64;
        check(unsafe { sys::peft_attach_prompt(self.raw, &o, &mut n) })?;
        Ok(n)
    }

    /// Trainable tokens (PEFT "TRAINABLE_TOKENS"): only these embedding rows are trained.
    pub fn attach_tokens(&mut self, token_ids: &[i32]) -> Result<u64> {
        let mut n = 0u64;
        check(unsafe { sys::peft_attach_tokens(self.raw, token_ids.as_ptr(), token_ids.len() as i32, &mut n) })?;
        Ok(n)
    }

    /// Load a saved adapter as the inactive adapter `name` (PEFT's load_adapter).
    pub fn load_named_adapter<P: AsRef<Path>>(&mut self, dir: P, name: &str) -> Result<()> {
        let d = c_path(dir.as_ref())?;
        let n = c_string(name.as_bytes(), "name")?;
        check(unsafe { sys::peft_adapter_load(self.raw, d.as_ptr(), n.as_ptr()) })
    }

    /// Make adapter `name` the active one; None: none active.
    pub fn set_adapter(&mut self, name: Option<&str>) -> Result<()> {
        let n = name.map(|s| c_string(s.as_bytes(), "name")).transpose()?;
        check(unsafe { sys::peft_adapter_set(self.raw, n.as_ref().map_or(ptr::null(), |c| c.as_ptr())) })
    }

    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        let n = c_string(name.as_bytes(), "name")?;
        check(unsafe { sys::peft_adapter_delete(self.raw, n.as_ptr()) })
    }

    /// The adapters' names (the active one first when the flag is true).
    pub fn adapters(&self) -> Result<(Vec<String>, bool)> {
        let (mut n, mut active) = (0i32, 0i32);
        check(unsafe { sys::peft_adapter_list(self.raw, ptr::null_mut(), 0, &mut n, &mut active) })?;
        let mut names: Vec<*const c_char> = vec![ptr::null(); n.max(1) as usize];
        check(unsafe { sys::peft_adapter_list(self.raw, names.as_mut_ptr(), n, &mut n, &mut active) })?;
        let out = names[..n as usize]
            .iter()
            .map(|&p| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        Ok((out, active != 0))
    }

    /// PEFT's add_weighted_adapter: a new inactive LoRA adapter from named ones.
    pub fn combine_adapters(&mut self, names: &[&str], weights: &[f64], new_name: &str, how: Combination,
                            svd_rank: i32) -> Result<()> {
        let o = CombineOptions { how, svd_rank, ..CombineOptions::default() };
        self.combine_adapters_with(names, weights, new_name, &o)
    }

    /// add_weighted_adapter with every setting (density, majority sign, clamp, seed).
    pub fn combine_adapters_with(&mut self, names: &[&str], weights: &[f64], new_name: &str,
                                 opts: &CombineOptions) -> Result<()> {
        if names.len() != weights.len() {
            return Err(Error::invalid("one weight per adapter".to_string()));
        }
        let cs = names.iter().map(|s| c_string(s.as_bytes(), "name")).collect::<Result<Vec<_>>>()?;
        let ptrs: Vec<*const c_char> = cs.iter().map(|c| c.as_ptr()).collect();
        let nn = c_string(new_name.as_bytes(), "new_name")?;
        let raw = sys::peft_combine_options {
            version: sys::PEFT_COMBINE_OPTIONS_VERSION,
            combination: opts.how.raw(),
            svd_rank: opts.svd_rank,
            majority_sign: if opts.majority_by_frequency { sys::PEFT_SIGN_FREQUENCY } else { sys::PEFT_SIGN_TOTAL }
                as i32,
            density: opts.density,
            svd_clamp: opts.svd_clamp,
            seed: opts.seed,
        };
        check(unsafe {
            sys::peft_adapter_combine_ex(self.raw, ptrs.as_ptr(), weights.as_ptr(), names.len() as i32, nn.as_ptr(),
                                         &raw)
        })
    }

    pub fn detach(&mut self) -> Result<()> {
        check(unsafe { sys::peft_detach(self.raw) })
    }

    pub fn set(&mut self, key: Opt, value: f64) -> Result<()> {
        check(unsafe { sys::peft_opt_set(self.raw, key.key(), value) })
    }

    pub fn get(&self, key: Opt) -> Result<f64> {
        let mut v = 0.0;
        check(unsafe { sys::peft_opt_get(self.raw, key.key(), &mut v) })?;
        Ok(v)
    }

    /// Forward, backward and (every `AccumSteps`-th call) an AdamW update.
    pub fn step(&mut self, batch: &Batch) -> Result<StepResult> {
        let b = batch.raw();
        let mut r = raw_step_result();
        check(unsafe { sys::peft_step(self.raw, &b, &mut r) })?;
        Ok(r.into())
    }

    /// Forward and backward only: the gradients add into [`Model::grads`].
    pub fn forward_backward(&mut self, batch: &Batch) -> Result<StepResult> {
        let b = batch.raw();
        let mut r = raw_step_result();
        check(unsafe { sys::peft_forward_backward(self.raw, &b, &mut r) })?;
        Ok(r.into())
    }

    /// The flat gradient buffer (sums over tokens), for a host to all-reduce.
    pub fn grads(&mut self) -> Result<&mut [f32]> {
        let (mut p, mut n) = (ptr::null_mut(), 0usize);
        check(unsafe { sys::peft_grad_buffer(&mut p, &mut n, self.raw) })?;
        Ok(if n == 0 { &mut [] } else { unsafe { std::slice::from_raw_parts_mut(p, n) } })
    }

    /// The flat trainable parameters (same order as the gradients).
    pub fn params(&mut self) -> Result<&mut [f32]> {
        let (mut p, mut n) = (ptr::null_mut(), 0usize);
        check(unsafe { sys::peft_param_buffer(&mut p, &mut n, self.raw) })?;
        Ok(if n == 0 { &mut [] } else { unsafe { std::slice::from_raw_parts_mut(p, n) } })
    }

    /// One optimizer update with the gradients divided by `token_count` (0: the count
    /// this handle accumulated); the gradients are zeroed after.
    pub fn apply_update(&mut self, token_count: f64) -> Result<StepResult> {
        let mut r = raw_step_result();
        check(unsafe { sys::peft_apply_update(self.raw, token_count, &mut r) })?;
        Ok(r.into())
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        check(unsafe { sys::peft_zero_grad(self.raw) })
    }

    /// The loss of a batch with the adapter applied; nothing is updated.
    pub fn eval(&mut self, batch: &Batch) -> Result<EvalResult> {
        let b = batch.raw();
        let mut r = sys::peft_eval_result { version: sys::PEFT_EVAL_RESULT_VERSION, loss_sum: 0.0, tokens: 0 };
        check(unsafe { sys::peft_eval(self.raw, &b, &mut r) })?;
        Ok(EvalResult { loss_sum: r.loss_sum, tokens: r.tokens })
    }

    /// Save the adapter as a Hugging Face PEFT directory (written atomically).
    pub fn save_adapter<P: AsRef<Path>>(&mut self, dir: P) -> Result<()> {
        let d = c_path(dir.as_ref())?;
        check(unsafe { sys::peft_save_adapter(self.raw, d.as_ptr(), ptr::null()) })
    }

    /// Save a PiSSA/OLoRA adapter as the plain LoRA (twice the rank) that applies to the
    /// original base (PEFT's path_initial_model_for_weight_conversion); other adapters as is.
    pub fn save_adapter_converted<P: AsRef<Path>>(&mut self, dir: P) -> Result<()> {
        let d = c_path(dir.as_ref())?;
        let o = sys::peft_save_options {
            version: sys::PEFT_SAVE_OPTIONS_VERSION,
            base_model_name_or_path: ptr::null(),
            convert_to_lora: 1,
        };
        check(unsafe { sys::peft_save_adapter(self.raw, d.as_ptr(), &o) })
    }

    /// Load a PEFT adapter directory (attaching it when nothing is attached).
    pub fn load_adapter<P: AsRef<Path>>(&mut self, dir: P) -> Result<()> {
        let d = c_path(dir.as_ref())?;
        check(unsafe { sys::peft_load_adapter(self.raw, d.as_ptr()) })
    }

    /// Base + adapter as a GGUF file for llama.cpp. From a GGUF base: its keys and unchanged
    /// tensors copied as stored, changed ones in the base's type (`GgufType::Same`) or every
    /// matrix in the given type. From a Hugging Face directory: the keys and tensors llama.cpp's
    /// converter writes, the vocabulary of its tokenizer.model or tokenizer.json.
    pub fn save_merged_gguf<P: AsRef<Path>>(&mut self, path: P, ty: GgufType, name: Option<&str>) -> Result<()> {
        let p = c_path(path.as_ref())?;
        let n = name.map(|s| c_string(s.as_bytes(), "name")).transpose()?;
        let o = sys::peft_gguf_export_options {
            version: sys::PEFT_GGUF_EXPORT_OPTIONS_VERSION,
            type_: ty as i32,
            name: opt_ptr(&n),
        };
        check(unsafe { sys::peft_save_merged_gguf(self.raw, p.as_ptr(), &o) })
    }

    /// Save the adapter as a GGUF LoRA file for llama.cpp's `--lora`.
    pub fn save_adapter_gguf<P: AsRef<Path>>(&mut self, path: P, name: Option<&str>) -> Result<()> {
        let p = c_path(path.as_ref())?;
        let n = name.map(|s| c_string(s.as_bytes(), "name")).transpose()?;
        check(unsafe { sys::peft_save_adapter_gguf(self.raw, p.as_ptr(), opt_ptr(&n)) })
    }

    /// Adapter plus optimizer state, to resume training exactly.
    pub fn save_checkpoint<P: AsRef<Path>>(&mut self, dir: P) -> Result<()> {
        let d = c_path(dir.as_ref())?;
        check(unsafe { sys::peft_save_checkpoint(self.raw, d.as_ptr()) })
    }

    pub fn load_checkpoint<P: AsRef<Path>>(&mut self, dir: P) -> Result<()> {
        let d = c_path(dir.as_ref())?;
        check(unsafe { sys::peft_load_checkpoint(self.raw, d.as_ptr()) })
    }

    /// Turn the adapter off (false) or on (true) without detaching it.
    pub fn set_adapter_enabled(&mut self, enabled: bool) -> Result<()> {
        check(unsafe { sys::peft_adapter_enable(self.raw, enabled as i32) })
    }

    pub fn merge_adapter(&mut self) -> Result<()> {
        check(unsafe { sys::peft_merge_adapter(self.raw) })
    }

    pub fn unmerge_adapter(&mut self) -> Result<()> {
        check(unsafe { sys::peft_unmerge_adapter(self.raw) })
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        unsafe { sys::peft_model_close(&mut self.raw) };
    }
}

/// A Hugging Face `tokenizer.json` (or a directory holding one).
pub struct Tokenizer {
    raw: *mut sys::peft_tokenizer,
}

unsafe impl Send for Tokenizer {}

impl Tokenizer {
    pub fn open<P: AsRef<Path>>(path: P) -> Result<Tokenizer> {
        let p = c_path(path.as_ref())?;
        let mut raw = ptr::null_mut();
        check(unsafe { sys::peft_tokenizer_open(&mut raw, p.as_ptr()) })?;
        Ok(Tokenizer { raw })
    }

    /// Token ids of UTF-8 text, with BOS/EOS as the tokenizer's settings say.
    pub fn encode(&self, text: &str) -> Result<Vec<i32>> {
        self.encode_with(text, sys::PEFT_TOKENIZE_DEFAULT as i32)
    }

    /// `flags`: `sys::PEFT_TOKENIZE_*` bits.
    pub fn encode_with(&self, text: &str, flags: i32) -> Result<Vec<i32>> {
        let mut n = 0usize;
        let p = text.as_ptr() as *const c_char;
        let code = unsafe { sys::peft_tokenize(self.raw, p, text.len(), flags, ptr::null_mut(), 0, &mut n) };
        if code != sys::PEFT_ERANGE {
            check(code)?;
        }
        let mut ids = vec![0i32; n];
        check(unsafe { sys::peft_tokenize(self.raw, p, text.len(), flags, ids.as_mut_ptr(), n, &mut n) })?;
        ids.truncate(n);
        Ok(ids)
    }

    /// The text of token ids (special tokens skipped).
    pub fn decode(&self, ids: &[i32]) -> Result<String> {
        let flags = sys::PEFT_DETOKENIZE_DEFAULT as i32;
        let mut n = 0usize;
        let code = unsafe { sys::peft_detokenize(self.raw, ids.as_ptr(), ids.len(), flags, ptr::null_mut(), 0, &mut n) };
        if code != sys::PEFT_ERANGE {
            check(code)?;
        }
        let mut buf = vec![0u8; n + 1];
        check(unsafe {
            sys::peft_detokenize(self.raw, ids.as_ptr(), ids.len(), flags, buf.as_mut_ptr() as *mut c_char, buf.len(), &mut n)
        })?;
        buf.truncate(n);
        String::from_utf8(buf).map_err(|e| Error { code: sys::PEFT_EFORMAT, message: format!("decoded text is not UTF-8: {}", e) })
    }

    pub fn vocab_size(&self) -> i32 {
        unsafe { sys::peft_tokenizer_vocab_size(self.raw) }
    }

    /// The BOS token id, if the tokenizer has one.
    pub fn bos(&self) -> Option<i32> {
        let id = unsafe { sys::peft_tokenizer_special(self.raw, sys::PEFT_TOKEN_BOS as i32) };
        if id < 0 {
            None
        } else {
            Some(id)
        }
    }

    /// The EOS token id, if the tokenizer has one.
    pub fn eos(&self) -> Option<i32> {
        let id = unsafe { sys::peft_tokenizer_special(self.raw, sys::PEFT_TOKEN_EOS as i32) };
        if id < 0 {
            None
        } else {
            Some(id)
        }
    }
}

impl Drop for Tokenizer {
    fn drop(&mut self) {
        unsafe { sys::peft_tokenizer_close(&mut self.raw) };
    }
}
