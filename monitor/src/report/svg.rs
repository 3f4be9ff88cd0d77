//! Small SVG charts, written inline into the report (no scripts, no
//! network at view time).

/// Escapes text for HTML and SVG, invisible characters included (see
/// [`crate::display`]).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.extend(c.escape_default()),
            c if crate::display::is_invisible(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Colours for series, colour-blind friendly (Okabe-Ito).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

/// A chart area with data ranges mapped to pixels.
pub struct Plot {
    x: (f64, f64),
    y: (f64, f64),
    body: String,
}

fn span((lo, hi): (f64, f64)) -> (f64, f64) {
    if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    }
}

impl Plot {
    /// A plot over these data ranges.
    pub fn new(x: (f64, f64), y: (f64, f64)) -> Self {
        Self {
            x: span(x),
            y: span(y),
            body: String::new(),
        }
    }

    /// Pixel x of a data x.
    pub fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (W - LEFT - RIGHT)
    }

    /// Pixel y of a data y.
    pub fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (H - TOP - BOTTOM)
    }

    /// A polyline through the points.
    pub fn line(&mut self, points: &[(f64, f64)], colour: &str, label: &str) {
        if points.is_empty() {
            return;
        }
        let d: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        self.body.push_str(&format!(
            "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>\n",
            d.join(" "),
            esc(label)
        ));
    }

    /// A dot with a tooltip.
    pub fn dot(&mut self, x: f64, y: f64, r: f64, colour: &str, title: &str) {
        self.body.push_str(&format!(
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r:.1}\" fill=\"{colour}\" fill-opacity=\"0.8\"><title>{}</title></circle>\n",
            self.px(x),
            self.py(y),
            esc(title)
        ));
    }

    /// A bar from y=0 (or the bottom) to `y`, between `x0` and `x1`.
    pub fn bar(&mut self, x0: f64, x1: f64, y: f64, colour: &str, title: &str) {
        let (a, b) = (self.px(x0), self.px(x1));
        let top = self.py(y);
        let base = self.py(self.y.0);
        self.body.push_str(&format!(
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{}</title></rect>\n",
            a,
            (b - a - 1.0).max(1.0),
            (base - top).max(0.0),
            esc(title)
        ));
    }

    /// A vertical marker line with a label.
    pub fn vline(&mut self, x: f64, colour: &str, label: &str) {
        let px = self.px(x);
        self.body.push_str(&format!(
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\" font-size=\"12\">{}</text>\n",
            H - BOTTOM,
            px + 4.0,
            TOP + 12.0,
            esc(label)
        ));
    }

    /// The finished SVG with axes, tick labels made by `fmt_x`/`fmt_y`.
    pub fn finish(
        self,
        x_label: &str,
        y_label: &str,
        fmt_x: impl Fn(f64) -> String,
        fmt_y: impl Fn(f64) -> String,
    ) -> String {
        let mut axes = format!(
            "<line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\" stroke=\"#555\"/>\
             <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\" stroke=\"#555\"/>\n",
            b = H - BOTTOM,
            r = W - RIGHT
        );
        for i in 0..=4 {
            let fx = self.x.0 + (self.x.1 - self.x.0) * f64::from(i) / 4.0;
            let fy = self.y.0 + (self.y.1 - self.y.0) * f64::from(i) / 4.0;
            axes.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#333\">{}</text>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#333\">{}</text>\
                 <line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\n",
                self.px(fx),
                H - BOTTOM + 16.0,
                esc(&fmt_x(fx)),
                LEFT - 6.0,
                self.py(fy) + 4.0,
                esc(&fmt_y(fy)),
                self.py(fy),
                W - RIGHT,
                self.py(fy)
            ));
        }
        axes.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">{}</text>\
             <text x=\"14\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\" transform=\"rotate(-90 14 {:.1})\">{}</text>\n",
            (LEFT + W - RIGHT) / 2.0,
            H - 6.0,
            esc(x_label),
            (TOP + H - BOTTOM) / 2.0,
            (TOP + H - BOTTOM) / 2.0,
            esc(y_label)
        ));
        format!(
            "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\">\n{axes}{}</svg>\n",
            self.body
        )
    }
}
