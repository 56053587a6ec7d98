//! barrage controller: loads a plan, drives agents over gRPC (embedded
//! in-process ones by default), merges their measurements exactly and writes
//! the report.

pub mod accuracy;
pub mod cli;
pub mod compare;
pub mod console;
pub mod dataset;
pub mod edges;
pub mod embedded;
pub mod events;
pub mod folder;
pub mod html;
pub mod link;
pub mod live;
pub mod merge;
pub mod monitor;
pub mod outputs;
pub mod prometheus;
pub mod report;
pub mod run;
pub mod service;
pub mod slices;
pub mod store;
pub mod summary_text;
pub mod sweep;
pub mod trace;
pub mod turns;
pub mod verdict;
