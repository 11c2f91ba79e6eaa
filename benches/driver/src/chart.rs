//! The frame every plot of the report shares (one SVG size, caption, margins, axis labels and a
//! legend box) and the series they draw alike, so each plot says only what it shows.

use std::path::Path;

use anyhow::Result;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// The size of every plot, in pixels.
const SIZE: (u32, u32) = (720, 420);

/// A plot's drawing area, in its coordinates.
pub type Chart<'a, 'b, X, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>;

/// What a plot's frame says: its title, its axes and where its legend goes.
pub struct Frame<'t> {
    pub title: &'t str,
    pub x_desc: &'t str,
    pub y_desc: &'t str,
    pub legend: SeriesLabelPosition,
}

impl<'t> Frame<'t> {
    /// A frame with the legend at plotters' default place (middle right).
    pub fn new(title: &'t str, x_desc: &'t str, y_desc: &'t str) -> Frame<'t> {
        Frame {
            title,
            x_desc,
            y_desc,
            legend: SeriesLabelPosition::MiddleRight,
        }
    }

    pub fn legend(self, legend: SeriesLabelPosition) -> Frame<'t> {
        Frame { legend, ..self }
    }
}

/// Draws a plot at `path`: the frame over the ranges `x` and `y`, what `body` draws in it, then
/// the legend of the labelled series.
pub fn draw<X, Y>(
    path: &Path,
    frame: Frame<'_>,
    x: X,
    y: Y,
    body: impl FnOnce(&mut Chart<'_, '_, X::CoordDescType, Y::CoordDescType>) -> Result<()>,
) -> Result<()>
where
    X: AsRangedCoord,
    Y: AsRangedCoord,
    X::CoordDescType: ValueFormatter<X::Value>,
    Y::CoordDescType: ValueFormatter<Y::Value>,
{
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(frame.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(frame.x_desc)
        .y_desc(frame.y_desc)
        .draw()?;
    body(&mut chart)?;
    chart
        .configure_series_labels()
        .position(frame.legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The colour of a plot's `i`-th series.
pub fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// A labelled line in `color`.
pub fn line<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    points: impl IntoIterator<Item = (X::ValueType, Y::ValueType)>,
    color: RGBAColor,
    label: impl Into<String>,
) -> Result<()>
where
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    Ok(())
}

/// A target drawn as a thin grey line from `from` to `to`, labelled.
pub fn target_line<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    from: (X::ValueType, Y::ValueType),
    to: (X::ValueType, Y::ValueType),
    label: &str,
) -> Result<()>
where
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    let grey = BLACK.mix(0.4);
    chart
        .draw_series(LineSeries::new([from, to], grey))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    Ok(())
}
