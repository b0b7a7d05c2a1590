//! Fonts for plot text, so titles and labels render the same on every machine and CJK text does
//! not turn into empty boxes ("tofu").
//!
//! Plot text is drawn by plotters' pure-Rust `ab_glyph` path from fonts registered here:
//! - [`SANS`]: DejaVu Sans, bundled in the binary (`fonts/DejaVuSans.ttf`, Bitstream Vera licence
//!   beside it): Latin, Greek, Cyrillic, arrows and math signs — every plot has readable text.
//! - [`FALLBACK`]: a font located on the machine for what DejaVu lacks (Chinese, Japanese,
//!   Korean): `$TUNELAB_FONT` when set, else the usual places of Noto Sans CJK, WenQuanYi, Droid
//!   Sans Fallback, PingFang, Microsoft YaHei (Debian: `apt install fonts-noto-cjk` or
//!   `fonts-wqy-microhei`).
//!
//! [`family_for`] picks, per piece of text, the first of the two that has every glyph.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef};
use plotters::style::{register_font, FontStyle};

/// Family name of the bundled DejaVu Sans.
pub const SANS: &str = "sans-serif";
/// Family name of the located fallback font (CJK). plotters keys fonts by this string and writes
/// it verbatim into SVG `font-family`, so it is a CSS list an SVG viewer can resolve itself.
pub const FALLBACK: &str =
    "Noto Sans CJK SC, WenQuanYi Micro Hei, PingFang SC, Microsoft YaHei, sans-serif";

static BUNDLED: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// Where CJK-capable fonts usually live (Debian/Ubuntu, Fedora, Arch, macOS, Windows).
const KNOWN_FALLBACKS: [&str; 12] = [
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "C:\\Windows\\Fonts\\msyh.ttc",
    "C:\\Windows\\Fonts\\simsun.ttc",
];

/// The registered fonts: the bundled one always, the fallback when one was found.
struct Registered {
    sans: FontRef<'static>,
    fallback: Option<(PathBuf, FontRef<'static>)>,
}

fn registered() -> &'static Registered {
    static FONTS: OnceLock<Registered> = OnceLock::new();
    FONTS.get_or_init(|| {
        let sans = FontRef::try_from_slice(BUNDLED).expect("the bundled DejaVu Sans parses");
        // Registering a font that parsed cannot fail: plotters parses it the same way.
        let _ = register_font(SANS, FontStyle::Normal, BUNDLED);
        let fallback = locate_fallback().and_then(|path| {
            let bytes: &'static [u8] = Box::leak(std::fs::read(&path).ok()?.into_boxed_slice());
            let font = FontRef::try_from_slice(bytes).ok()?;
            register_font(FALLBACK, FontStyle::Normal, bytes).ok()?;
            Some((path, font))
        });
        Registered { sans, fallback }
    })
}

/// The first fallback font file that exists: `$TUNELAB_FONT`, then [`KNOWN_FALLBACKS`].
fn locate_fallback() -> Option<PathBuf> {
    let from_env = std::env::var_os("TUNELAB_FONT").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(KNOWN_FALLBACKS.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Whether `font` has a glyph for every visible character of `text`.
fn covers(font: &FontRef<'_>, text: &str) -> bool {
    text.chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .all(|c| font.glyph_id(c).0 != 0)
}

/// The fallback font in use, if any (for messages and tests).
pub fn fallback_path() -> Option<&'static Path> {
    registered().fallback.as_ref().map(|(p, _)| p.as_path())
}

/// The family to draw `text` with, or an error line when no font has all its glyphs.
pub fn family_for(text: &str) -> Result<&'static str, String> {
    let fonts = registered();
    if covers(&fonts.sans, text) {
        return Ok(SANS);
    }
    if let Some((_, font)) = &fonts.fallback {
        if covers(font, text) {
            return Ok(FALLBACK);
        }
    }
    let missing: String = text
        .chars()
        .filter(|&c| !c.is_whitespace() && fonts.sans.glyph_id(c).0 == 0)
        .take(3)
        .collect();
    Err(format!(
        "no font here has the characters {missing:?} of the plot text {text:?}, so they would \
         show as boxes: install a CJK font (Debian: apt install fonts-noto-cjk or \
         fonts-wqy-microhei) or set TUNELAB_FONT to a font file that has them"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin_text_uses_the_bundled_font() {
        assert_eq!(family_for("training loss — step 120, α=0.9").unwrap(), SANS);
    }

    #[test]
    fn cjk_text_uses_the_fallback_or_says_what_to_install() {
        match (family_for("训练损失 (loss)"), fallback_path()) {
            (Ok(family), Some(_)) => assert_eq!(family, FALLBACK),
            (Err(message), None) => assert!(message.contains("fonts-noto-cjk"), "{message}"),
            (result, path) => panic!("unexpected {result:?} with fallback {path:?}"),
        }
    }
}
