//! The one place the CLI escapes text for a terminal and lays out tables:
//! every command's table and one-line answer goes through [`printable`],
//! [`Grid`] and [`render`].

use comfy_table::{presets::UTF8_FULL_CONDENSED, ColumnConstraint, ContentArrangement, Table};
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

/// The width tables take when standard output is not a terminal.
pub const DEFAULT_WIDTH: u16 = 100;

/// Free text narrower than this is never cut further: below it a cut cell
/// says nothing, and the table wraps instead.
const MIN_FREE_COLUMN: usize = 8;

/// Text from the server made safe for a terminal: control characters and
/// invisible direction overrides are shown escaped (`\u{1b}`), never
/// interpreted. The server strips them already; this holds even against a
/// server (or a record) that did not.
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for character in text.chars() {
        if is_unprintable(character) {
            shown.extend(character.escape_unicode());
        } else {
            shown.push(character);
        }
    }
    shown
}

fn is_unprintable(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// What a document prints: pretty JSON for scripts, or the table for people
/// with every line shown [`printable`] (the table cells already are; this
/// also covers one-line answers that quote the server).
pub fn render<T: Serialize>(json: bool, value: &T, table: impl FnOnce() -> String) -> String {
    if json {
        // Serialising our own plain structs cannot fail.
        serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
    } else {
        table().split('\n').map(printable).collect::<Vec<_>>().join("\n") + "\n"
    }
}

/// The terminal's width when standard output is one, else [`DEFAULT_WIDTH`].
pub fn terminal_width() -> u16 {
    Table::new().width().unwrap_or(DEFAULT_WIDTH)
}

/// RFC 3339 (UTC, seconds) for a wire time. Total: times before 1970 show
/// as 1970, times past what a calendar can print as the year 9999.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    /// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
    const LAST_PRINTABLE_SECOND: u64 = 253_402_300_799;
    let timestamp = timestamp?;
    let seconds = u64::try_from(timestamp.seconds).unwrap_or(0).min(LAST_PRINTABLE_SECOND);
    let time = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))?;
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

pub fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

pub fn or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

/// `text` cut to at most `limit` columns of a terminal, marked with `…` when cut.
pub fn shorten(text: &str, limit: usize) -> String {
    if text.width() <= limit {
        return text.to_owned();
    }
    let mut cut = String::new();
    let mut used = 0;
    for character in text.chars() {
        let width = unicode_width::UnicodeWidthChar::width(character).unwrap_or(0);
        if used + width + 1 > limit {
            break;
        }
        used += width;
        cut.push(character);
    }
    cut.push('…');
    cut
}

/// How a column gives way when a table is wider than the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Versions, domains, ids, states: shown whole, never broken mid-value.
    Whole,
    /// Free text (drift, reasons, messages, labels): cut with `…` to fit;
    /// `--json` carries it whole.
    Cut,
}

/// A table for people: cells escaped on entry, laid out to a width by
/// [`Grid::render`].
#[derive(Debug, Clone)]
pub struct Grid {
    columns: Vec<(&'static str, Fit)>,
    rows: Vec<Vec<String>>,
}

impl Grid {
    pub fn new(columns: &[(&'static str, Fit)]) -> Grid {
        Grid {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; every cell is shown [`printable`] (a line break in a cell
    /// is shown escaped, not as a break).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|cell| printable(cell)).collect());
    }

    /// Adds a row whose cells are lists of lines: the breaks are ours, each
    /// line is shown [`printable`].
    pub fn row_of_lines(&mut self, cells: Vec<Vec<String>>) {
        self.rows.push(
            cells
                .iter()
                .map(|lines| lines.iter().map(|line| printable(line)).collect::<Vec<_>>().join("\n"))
                .collect(),
        );
    }

    /// The table at most `width` columns wide (as long as each column can
    /// have a few): free text is cut with `…` first; whole values wrap only
    /// when they alone are wider than the terminal.
    pub fn render(&self, width: u16) -> String {
        let count = self.columns.len();
        // "│ a │ b │": one bar per column plus one, and a space each side of a cell.
        let available = usize::from(width).saturating_sub(3 * count + 1);
        let content: Vec<usize> = (0..count)
            .map(|index| {
                let cells = self.rows.iter().filter_map(|row| row.get(index));
                cells
                    .flat_map(|cell| cell.split('\n'))
                    .map(UnicodeWidthStr::width)
                    .chain([self.columns[index].0.width()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut limits = content.clone();
        if content.iter().sum::<usize>() > available {
            let whole: usize = (0..count).filter(|&i| self.columns[i].1 == Fit::Whole).map(|i| content[i]).sum();
            let mut free: Vec<usize> = (0..count).filter(|&i| self.columns[i].1 == Fit::Cut).collect();
            free.sort_by_key(|&index| content[index]);
            let mut budget = available.saturating_sub(whole);
            let mut left = free.len();
            for index in free {
                let share = (budget / left).max(MIN_FREE_COLUMN.min(content[index]));
                limits[index] = content[index].min(share);
                budget = budget.saturating_sub(limits[index]);
                left -= 1;
            }
        }
        let fits = limits.iter().sum::<usize>() <= available;
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(self.columns.iter().map(|(name, _)| *name).collect::<Vec<_>>());
        for row in &self.rows {
            table.add_row(
                row.iter()
                    .enumerate()
                    .map(|(index, cell)| {
                        let limit = limits.get(index).copied().unwrap_or(usize::MAX);
                        cell.split('\n').map(|line| shorten(line, limit)).collect::<Vec<_>>().join("\n")
                    })
                    .collect::<Vec<_>>(),
            );
        }
        if fits {
            // Everything fits as it is: no column may wrap.
            table.set_content_arrangement(ContentArrangement::Disabled);
        } else {
            // Whole values alone are wider than the terminal: let the table
            // wrap them rather than spill past the edge.
            table.set_content_arrangement(ContentArrangement::Dynamic).set_width(width);
            for index in 0..count {
                if let (Some(column), Fit::Cut) = (table.column_mut(index), self.columns[index].1) {
                    column.set_constraint(ColumnConstraint::UpperBoundary(comfy_table::Width::Fixed(
                        u16::try_from(limits[index] + 2).unwrap_or(u16::MAX),
                    )));
                }
            }
        }
        table.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_escaped() {
        let cases = [
            ("converged", "converged"),
            ("\u{1b}[2J", "\\u{1b}[2J"),
            ("\u{1b}]52;c;aGk=\u{7}", "\\u{1b}]52;c;aGk=\\u{7}"),
            ("a\nb", "a\\u{a}b"),
            ("\u{9b}x", "\\u{9b}x"),
            ("ab\u{202e}c", "ab\\u{202e}c"),
            ("日本 ☃", "日本 ☃"),
            ("ok\u{1b}[31mred\n", "ok\\u{1b}[31mred\\u{a}"),
        ];
        for (input, shown) in cases {
            assert_eq!(printable(input), shown, "{input:?}");
        }
    }

    #[test]
    fn shorten_cuts_by_terminal_columns() {
        let cases = [
            ("abc", 3, "abc"),
            ("abcd", 3, "ab…"),
            ("日本語", 4, "日…"),
            ("", 0, ""),
            ("ab", 0, "…"),
        ];
        for (text, limit, expect) in cases {
            assert_eq!(shorten(text, limit), expect, "{text:?} {limit}");
        }
    }

    #[test]
    fn times_are_total() {
        let at = |seconds| time(Some(&prost_types::Timestamp { seconds, nanos: 0 }));
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (-5, "1970-01-01T00:00:00Z"),
            (i64::MIN, "1970-01-01T00:00:00Z"),
            (1 << 62, "9999-12-31T23:59:59Z"),
            (i64::MAX, "9999-12-31T23:59:59Z"),
            (1_796_000_000, "2026-11-30T00:53:20Z"),
        ];
        for (seconds, expect) in cases {
            assert_eq!(at(seconds).as_deref(), Some(expect), "{seconds}");
        }
        assert_eq!(time(None), None);
    }

    #[test]
    fn whole_values_never_break_while_free_text_is_cut() {
        let mut grid = Grid::new(&[("VERSION", Fit::Whole), ("DOMAIN", Fit::Whole), ("REASON", Fit::Cut)]);
        grid.row(vec!["2.0.0+2.0".into(), "blog.example.org".into(), "x".repeat(300)]);
        let table = grid.render(60);
        expect_test::expect![[r#"
            ┌───────────┬──────────────────┬───────────────────────────┐
            │ VERSION   ┆ DOMAIN           ┆ REASON                    │
            ╞═══════════╪══════════════════╪═══════════════════════════╡
            │ 2.0.0+2.0 ┆ blog.example.org ┆ xxxxxxxxxxxxxxxxxxxxxxxx… │
            └───────────┴──────────────────┴───────────────────────────┘"#]]
        .assert_eq(&table);
    }
}
