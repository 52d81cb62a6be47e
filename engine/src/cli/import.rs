//! `gatewarden import` (being built).

/// Arguments of `gatewarden import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {}

pub(crate) fn run(_args: ImportArgs) -> anyhow::Result<()> {
    anyhow::bail!("gatewarden import is not available in this build yet")
}
