//! The values a GGUF header holds and the ggml tensor types with their block geometry
//! (`ggml/include/ggml.h`, `ggml-common.h`).

/// A metadata value. Arrays hold values of one type (arrays of arrays are allowed).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// The element type id (also for an empty array) and the elements.
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// GGUF value type ids.
pub mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

impl Value {
    /// This value's type id.
    pub fn type_id(&self) -> u32 {
        use type_id::*;
        match self {
            Value::U8(_) => U8,
            Value::I8(_) => I8,
            Value::U16(_) => U16,
            Value::I16(_) => I16,
            Value::U32(_) => U32,
            Value::I32(_) => I32,
            Value::F32(_) => F32,
            Value::Bool(_) => BOOL,
            Value::String(_) => STRING,
            Value::Array(..) => ARRAY,
            Value::U64(_) => U64,
            Value::I64(_) => I64,
            Value::F64(_) => F64,
        }
    }

    /// An array of strings.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Array(
            type_id::STRING,
            items.into_iter().map(|s| Value::String(s.into())).collect(),
        )
    }

    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A ggml tensor type: its id, name, and how many weights fill how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    /// Weights per block (1 for plain types).
    pub block: u64,
    /// Bytes per block.
    pub bytes: u64,
}

/// Every ggml type a GGUF file may hold (the retired ids 4, 5, 31–33, 36–38 excepted).
pub const GGML_TYPES: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 18),
    t(3, "Q4_1", 32, 20),
    t(6, "Q5_0", 32, 22),
    t(7, "Q5_1", 32, 24),
    t(8, "Q8_0", 32, 34),
    t(9, "Q8_1", 32, 36),
    t(10, "Q2_K", 256, 84),
    t(11, "Q3_K", 256, 110),
    t(12, "Q4_K", 256, 144),
    t(13, "Q5_K", 256, 176),
    t(14, "Q6_K", 256, 210),
    t(15, "Q8_K", 256, 292),
    t(16, "IQ2_XXS", 256, 66),
    t(17, "IQ2_XS", 256, 74),
    t(18, "IQ3_XXS", 256, 98),
    t(19, "IQ1_S", 256, 50),
    t(20, "IQ4_NL", 32, 18),
    t(21, "IQ3_S", 256, 110),
    t(22, "IQ2_S", 256, 82),
    t(23, "IQ4_XS", 256, 136),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", 256, 56),
    t(30, "BF16", 1, 2),
    t(34, "TQ1_0", 256, 54),
    t(35, "TQ2_0", 256, 66),
];

const fn t(id: u32, name: &'static str, block: u64, bytes: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block,
        bytes,
    }
}

impl GgmlType {
    /// The type with this id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().copied().find(|t| t.id == id)
    }

    /// The type with this name (`Q4_K`, `f16`: case does not matter).
    /// candle's name for this type, where candle has it.
    pub fn to_candle(&self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType as D;
        Some(match self.name {
            "F32" => D::F32,
            "F16" => D::F16,
            "BF16" => D::BF16,
            "Q4_0" => D::Q4_0,
            "Q4_1" => D::Q4_1,
            "Q5_0" => D::Q5_0,
            "Q5_1" => D::Q5_1,
            "Q8_0" => D::Q8_0,
            "Q8_1" => D::Q8_1,
            "Q2_K" => D::Q2K,
            "Q3_K" => D::Q3K,
            "Q4_K" => D::Q4K,
            "Q5_K" => D::Q5K,
            "Q6_K" => D::Q6K,
            "Q8_K" => D::Q8K,
            _ => return None,
        })
    }

    /// The type candle calls `d`.
    pub fn from_candle(d: candle_core::quantized::GgmlDType) -> GgmlType {
        GGML_TYPES
            .iter()
            .find(|t| t.to_candle() == Some(d))
            .copied()
            .expect("every candle ggml type is in GGML_TYPES")
    }

    pub fn from_name(name: &str) -> Option<GgmlType> {
        GGML_TYPES
            .iter()
            .copied()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Bytes of a tensor of `elements` weights (a whole number of blocks), or None when
    /// `elements` is not one or the bytes would not fit in a u64 (a corrupt file's dimensions).
    pub fn bytes_for(&self, elements: u64) -> Option<u64> {
        elements
            .is_multiple_of(self.block)
            .then(|| (elements / self.block).checked_mul(self.bytes))
            .flatten()
    }

    /// Bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.block as f64
    }
}

/// One tensor's description in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `ne[0]` is the row length (the reverse of a PyTorch shape).
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of weights.
    pub fn elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Bytes of its data (unpadded).
    pub fn bytes(&self) -> u64 {
        self.elements() / self.ggml_type.block * self.ggml_type.bytes
    }
}

/// `n` rounded up to a multiple of `align` (a power of two).
pub fn pad(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}
