//! The `scan` extension: package inventories of stored images, computed
//! once per layer for the whole fleet, matched at read time against an
//! offline vulnerability database.

pub mod analyzers;
pub mod cli;
pub mod inventory;
pub mod layer;
pub mod merge;
pub mod report;
pub mod service;
pub mod version;
pub mod vulndb;

pub use service::{Outcome, Scanner};
