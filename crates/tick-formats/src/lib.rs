//! Decoders of the history formats tickflow reads (Dukascopy `.bi5` hours, CSV tick files),
//! with their command-line options: shared by ingest's sources, `replayer import` and
//! `indicator-dump` without one stage depending on another.

pub mod csv;
pub mod dukascopy;
pub mod lines;
