//! The one place the CLI escapes text for a terminal and lays out tables:
//! every command's table and one-line answer goes through [`printable`],
//! [`Grid`] and [`render`].

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

/// The width tables take when standard output is not a terminal.
pub const DEFAULT_WIDTH: u16 = 100;

/// Whole values go onto more lines before free text is cut below this.
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

/// `value` in pieces at most `limit` terminal columns wide (at least one
/// character each).
fn break_value(value: &str, limit: usize) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut used = 0;
    for character in value.chars() {
        let width = unicode_width::UnicodeWidthChar::width(character).unwrap_or(0);
        if used + width > limit && used > 0 {
            pieces.push(String::new());
            used = 0;
        }
        used += width;
        if let Some(piece) = pieces.last_mut() {
            piece.push(character);
        }
    }
    pieces
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

    /// The table at most `width` columns wide: free text is cut with `…`,
    /// and whole values that would not fit are put on more lines at their
    /// spaces (`1.2.0+1 (2.0.0+1)`), never broken inside a value. Only when
    /// single values are wider than the terminal does the table break them.
    pub fn render(&self, width: u16) -> String {
        let count = self.columns.len();
        // "│ a ┆ b │": one bar per column plus one, and a space each side of a cell.
        let available = usize::from(width).saturating_sub(3 * count + 1);
        let column_width = |index: usize, measure: &dyn Fn(&str) -> usize| {
            self.rows
                .iter()
                .filter_map(|row| row.get(index))
                .flat_map(|cell| cell.split('\n'))
                .map(measure)
                .chain([self.columns[index].0.width()])
                .max()
                .unwrap_or(0)
        };
        let content: Vec<usize> = (0..count)
            .map(|index| column_width(index, &UnicodeWidthStr::width))
            .collect();
        let words: Vec<usize> = (0..count)
            .map(|index| {
                column_width(index, &|line| {
                    line.split(' ').map(UnicodeWidthStr::width).max().unwrap_or(0)
                })
            })
            .collect();
        let is_whole = |index: usize| self.columns[index].1 == Fit::Whole;
        let mut limits = content.clone();
        let mut wrapped = vec![false; count];
        let mut broken = vec![false; count];
        if content.iter().sum::<usize>() > available {
            let free_minimum: usize = (0..count)
                .filter(|&i| !is_whole(i))
                .map(|i| content[i].min(MIN_FREE_COLUMN))
                .sum();
            // Whole columns go onto more lines, the one that saves most first,
            // until the free text has its minimum.
            let mut by_saving: Vec<usize> = (0..count).filter(|&i| is_whole(i) && words[i] < content[i]).collect();
            by_saving.sort_by_key(|&index| std::cmp::Reverse(content[index] - words[index]));
            for index in by_saving {
                let whole: usize = (0..count).filter(|&i| is_whole(i)).map(|i| limits[i]).sum();
                if whole + free_minimum <= available {
                    break;
                }
                limits[index] = words[index];
                wrapped[index] = true;
            }
            let mut whole: usize = (0..count).filter(|&i| is_whole(i)).map(|i| limits[i]).sum();
            if whole + free_minimum > available {
                // Single values wider than the terminal: share what is left
                // among the whole columns and break those values (the one
                // case where a value is broken; `--json` has it whole).
                let mut whole_columns: Vec<usize> = (0..count).filter(|&i| is_whole(i)).collect();
                whole_columns.sort_by_key(|&index| limits[index]);
                let mut budget = available.saturating_sub(free_minimum);
                let mut left = whole_columns.len();
                for index in whole_columns {
                    if limits[index] > budget / left {
                        limits[index] = (budget / left).max(self.columns[index].0.width()).max(1);
                        broken[index] = true;
                    }
                    budget = budget.saturating_sub(limits[index]);
                    left -= 1;
                }
                whole = (0..count).filter(|&i| is_whole(i)).map(|i| limits[i]).sum();
            }
            let mut free: Vec<usize> = (0..count).filter(|&i| !is_whole(i)).collect();
            free.sort_by_key(|&index| content[index]);
            let mut budget = available.saturating_sub(whole);
            let mut left = free.len();
            for index in free {
                limits[index] = content[index].min(budget / left).max(1);
                budget = budget.saturating_sub(limits[index]);
                left -= 1;
            }
        }
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(self.columns.iter().map(|(name, _)| *name).collect::<Vec<_>>());
        for row in &self.rows {
            table.add_row(
                row.iter()
                    .enumerate()
                    .map(|(index, cell)| {
                        let lines = cell.split('\n');
                        let limit = limits.get(index).copied().unwrap_or(usize::MAX);
                        if broken.get(index) == Some(&true) {
                            lines
                                .flat_map(|line| line.split(' '))
                                .flat_map(|word| break_value(word, limit))
                                .collect::<Vec<_>>()
                                .join("\n")
                        } else if wrapped.get(index) == Some(&true) {
                            lines.flat_map(|line| line.split(' ')).collect::<Vec<_>>().join("\n")
                        } else {
                            lines.map(|line| shorten(line, limit)).collect::<Vec<_>>().join("\n")
                        }
                    })
                    .collect::<Vec<_>>(),
            );
        }
        // The layout above fits (as long as each column can have one
        // character): the table must not rearrange it.
        table.set_content_arrangement(ContentArrangement::Disabled);
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
