//! Nyala's shared vocabulary.
//!
//! Every layer (storage, SQL, the network front ends, the client) speaks of tables in the terms
//! defined here, so that a column type or a key means the same thing everywhere:
//!
//! - [`types`]: the column types a table may hold and their Arrow representation;
//! - [`schema`]: a table schema with its primary key, validated once at construction;
//! - [`value`]: single values, for point lookups and for building small batches by hand;
//! - [`codec`]: the memcomparable encoding of keys and the row encoding of the write buffer.

pub mod codec;
pub mod error;
pub mod rowformat;
pub mod schema;
pub mod types;
pub mod value;

pub use codec::RowCodec;
pub use error::SchemaError;
pub use schema::{ColumnSchema, Schema};
pub use types::DataType;
pub use value::Value;
