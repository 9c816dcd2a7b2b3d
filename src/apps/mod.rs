//! One module per way to drive the core, each with its command-line glue: the Kafka service
//! ([`run`]), JSON-lines [`replay`], policy comparison ([`whatif`]), the embedded [`demo`] with
//! its simulated backend ([`sim`]), the [`bench`], synthetic inputs ([`scenario`], [`generate`]), the
//! history [`archive`], the demand commands ([`demand`], with [`backtest_plot`]).

pub mod archive;
pub(crate) mod backtest_plot;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demand;
pub mod demo;
pub mod generate;
pub mod replay;
pub mod run;
pub mod scenario;
pub(crate) mod sim;
pub mod whatif;
