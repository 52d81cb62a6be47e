//! `gatewarden gallery` (being built).

/// Arguments of `gatewarden gallery`.
#[derive(Debug, clap::Args)]
pub(crate) struct GalleryArgs {}

pub(crate) fn run(_args: GalleryArgs) -> anyhow::Result<()> {
    anyhow::bail!("gatewarden gallery is not available in this build yet")
}
