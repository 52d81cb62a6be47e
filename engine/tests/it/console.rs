//! The market console in a real browser (headless Chromium). Written by the console work.
