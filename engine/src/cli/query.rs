//! `gatewarden query` (being built).

/// Arguments of `gatewarden query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {}

pub(crate) fn run(_args: QueryArgs) -> anyhow::Result<()> {
    anyhow::bail!("gatewarden query is not available in this build yet")
}
