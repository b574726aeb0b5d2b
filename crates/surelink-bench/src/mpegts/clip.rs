//! The reference MPEG-TS clip of the `mpegts` workload, and ffmpeg itself.
//!
//! [`ensure_ffmpeg`] finds `ffmpeg` on `PATH` (installing Debian's `ffmpeg`
//! package when the run allows it, as the harness does for SRT's tools).
//! [`reference`] encodes the clip once: ffmpeg's `testsrc2` pattern at
//! 1280×720, 30 frames/s, H.264 (libx264) at a constant 4 Mbit/s with a
//! 1-second GOP, and a 48 kHz AAC tone, muxed as MPEG-TS. The file lives in
//! the system's temporary directory under a name derived from everything
//! that determines its content (the encoding arguments and ffmpeg's
//! version), so repeated runs reuse it; it is written under a temporary name
//! and renamed into place, so a cut-short encode never passes for a clip.

use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::durable::Proc;
use crate::transport::srt::{apt_install, which};

/// The encoder binary.
pub const FFMPEG: &str = "ffmpeg";
/// The Debian package that provides it.
const PACKAGE: &str = "ffmpeg";

/// Whether ffmpeg can run: `Ok(version line)`, or why not (naming the
/// package). With `install`, installs the package when it is missing.
pub fn ensure_ffmpeg(install: bool) -> anyhow::Result<String> {
    if which(FFMPEG).is_none() {
        if !install {
            bail!(
                "{FFMPEG} not found on PATH: install the Debian package {PACKAGE} (apt-get install -y {PACKAGE}) or rerun with --install-peers"
            );
        }
        apt_install(PACKAGE).map_err(anyhow::Error::msg)?;
        if which(FFMPEG).is_none() {
            bail!("{PACKAGE} installed but {FFMPEG} is not on PATH");
        }
    }
    let out = std::process::Command::new(FFMPEG)
        .arg("-version")
        .output()
        .with_context(|| format!("{FFMPEG} -version"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("ffmpeg (version unknown)")
        .trim()
        .to_owned())
}

/// The encoding arguments of a clip of `secs` seconds (without the output).
fn encode_args(secs: f64) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:sample_rate=48000",
        "-t",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(format!("{secs}"));
    args.extend(
        [
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "4M",
            "-minrate",
            "4M",
            "-maxrate",
            "4M",
            "-bufsize",
            "2M",
            "-x264-params",
            "nal-hrd=cbr",
            "-g",
            "30",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-f",
            "mpegts",
        ]
        .map(str::to_owned),
    );
    args
}

/// The reference clip of `secs` seconds, encoded now or found from an
/// earlier run. `ffmpeg_version` is part of the cache key.
pub fn reference(secs: f64, ffmpeg_version: &str) -> anyhow::Result<PathBuf> {
    let args = encode_args(secs);
    let mut key = std::hash::DefaultHasher::new();
    args.hash(&mut key);
    ffmpeg_version.hash(&mut key);
    let dir = std::env::temp_dir().join("surelink-bench-mpegts");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let clip = dir.join(format!("ref-{secs}s-{:016x}.ts", key.finish()));
    if clip.is_file() {
        return Ok(clip);
    }
    let partial = dir.join(format!("partial-{}.ts", std::process::id()));
    eprintln!("surelink-bench: encoding the {secs} s reference clip with {FFMPEG}");
    let mut encode = args;
    encode.push(partial.display().to_string());
    let mut ffmpeg = Proc::spawn(Path::new(FFMPEG), &encode)?;
    // A 720p encode is slower than real time on a busy small machine.
    ffmpeg.wait_success_within(
        "ffmpeg (encoding the reference clip)",
        Duration::from_secs_f64(60.0 + secs * 10.0),
    )?;
    std::fs::rename(&partial, &clip).with_context(|| format!("renaming to {}", clip.display()))?;
    Ok(clip)
}
