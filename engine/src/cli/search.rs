//! `gatewarden search` (being built).

/// Arguments of `gatewarden search`.
#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {}

pub(crate) fn run(_args: SearchArgs) -> anyhow::Result<()> {
    anyhow::bail!("gatewarden search is not available in this build yet")
}
