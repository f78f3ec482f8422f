//! Nyala's SQL engine: Apache DataFusion over the database layer.
//!
//! Data flows one way: a statement is parsed and planned by DataFusion against a catalog that
//! reads the database live ([`catalog`]); tables scan their tablets as query partitions with
//! projection, filter and limit pushed down and write through the storage engine
//! ([`provider`]); DDL goes straight to the database ([`engine`]).

pub mod activity;
mod bytea;
pub mod catalog;
mod colnames;
mod conflict;
mod eager_aggregate;
pub mod engine;
pub mod error;
mod filters;
mod functions;
mod insert;
mod literals;
mod lookup;
mod params;
mod partition_clause;
mod pg;
mod pg_catalog;
pub mod provider;
mod run_aggregate;
pub mod statement;
mod system;
mod turns;
mod types;

pub use engine::Engine;
pub use error::SqlError;
pub use pg_catalog::{version_string, POSTGRES_VERSION};
pub use statement::{split_statements, Command, Description, Output, Prepared};
