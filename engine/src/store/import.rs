//! Import files into registry records: subjects, health records and gates from CSV or JSON
//! Lines. Pure parsing, no store access: the CLI drives it, and the engine and tests reuse it.
//!
//! Both formats carry the same field names:
//!
//! | record  | fields (required in bold)                                                       |
//! |---------|---------------------------------------------------------------------------------|
//! | subject | **subject**, **category**, **home_market**, markets, zones, valid_from, valid_until, id_card, qr_tokens, status |
//! | health  | **subject**, test_at, test_result, **vaccine_doses**, **health_code**, **travel_code**, **updated_at** |
//! | gate    | **gate**, **market**, **zone**, name                                            |
//!
//! - CSV (RFC 4180, read by the `csv` crate): a header row naming the columns (any order;
//!   optional ones may be left out), then one record per row. Fields may be double-quoted
//!   (`""` is a quote inside one, and a quoted field may span lines); spaces around fields are
//!   trimmed; lists are separated by `;`; an empty field is absent.
//! - JSON Lines: one object per line; lists are JSON arrays; `null` is absent.
//! - Times are unix milliseconds. Codes are lowercase: categories `service_worker`,
//!   `manager`, `staff`, `merchant`, `buyer`, `shopper`; status `active` (the default),
//!   `revoked`, `blocklisted`; test results `negative`, `positive`, `pending` (empty: none);
//!   colours `green`, `yellow`, `red`.
//! - Blank lines are skipped; line numbers in errors count every line of the file (a CSV row
//!   is numbered by the line it starts on).
//!
//! A bad row is a [`RowError`] with its line number and reason, and the reason never repeats
//! an ID-card number.

use std::collections::HashMap;
use std::io::BufRead;
use std::marker::PhantomData;
use std::path::Path;
use std::str::FromStr;

use gatewarden_protocol::{
    CodeColour, GateId, HealthRecord, MarketId, SubjectId, SubjectRecord, SubjectStatus,
    UnixMillis, ZoneId,
};

use super::codes::Named;
use super::key;
use crate::model::GateInfo;

/// How many row errors [`read_all`] keeps (all are counted).
pub const MAX_LISTED_ERRORS: usize = 20;

/// Times below this (1973-03-03 in ms) are almost certainly seconds given by mistake.
const MIN_PLAUSIBLE_MS: u64 = 100_000_000_000;

/// The file formats the importers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl ImportFormat {
    /// The format a file name's extension implies: `.csv`, `.jsonl` or `.ndjson`.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        ext.parse().ok()
    }
}

impl FromStr for ImportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" | "json-lines" => Ok(Self::JsonLines),
            other => Err(format!("unknown format {other:?}: expected csv or jsonl")),
        }
    }
}

/// A bad row: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RowError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// A failure that stops reading the whole file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The CSV header is unusable (unknown or missing columns).
    #[error("bad header, {0}")]
    Header(RowError),
    /// The input could not be read.
    #[error("cannot read the input after line {line}: {source}")]
    Io {
        /// The last line read.
        line: usize,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A record type the importers can read: [`SubjectRecord`], [`HealthRecord`], [`GateInfo`].
pub trait ImportRecord: Sized {
    /// The record's name in messages ("subject").
    const NAME: &'static str;
    /// Every field name, in canonical order.
    const COLUMNS: &'static [&'static str];
    /// The fields a CSV header must name.
    const REQUIRED: &'static [&'static str];
    /// The key that must not repeat within one file, if there is one.
    fn unique_key(&self) -> Option<u64>;
    /// Credentials that must not belong to two records of one file: (kind, value).
    fn credentials(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }
    /// Builds the record from a row, or says what is wrong with it.
    ///
    /// # Errors
    /// A missing, malformed or inconsistent field.
    fn from_row(row: &Row<'_>) -> Result<Self, String>;
}

/// One row's fields, in the order of [`ImportRecord::COLUMNS`].
#[derive(Debug)]
pub struct Row<'a> {
    columns: &'static [&'static str],
    cells: &'a [Cell],
}

#[derive(Clone, Debug, Default)]
enum Cell {
    #[default]
    Empty,
    Text(String),
    List(Vec<String>),
}

static EMPTY: Cell = Cell::Empty;

impl Row<'_> {
    fn cell(&self, name: &str) -> &Cell {
        self.columns
            .iter()
            .position(|c| *c == name)
            .and_then(|i| self.cells.get(i))
            .unwrap_or(&EMPTY)
    }

    /// A single value, trimmed; `None` if absent.
    fn text(&self, name: &str) -> Result<Option<&str>, String> {
        match self.cell(name) {
            Cell::Empty => Ok(None),
            Cell::Text(s) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
            Cell::List(_) => Err(format!("{name} must be a single value, not a list")),
        }
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.text(name)?.ok_or_else(|| format!("{name} is missing"))
    }

    /// A list: a JSON array, or text separated by `;`. Empty items are dropped.
    fn list(&self, name: &str) -> Vec<&str> {
        let items: Vec<&str> = match self.cell(name) {
            Cell::Empty => Vec::new(),
            Cell::Text(s) => s.split(';').collect(),
            Cell::List(v) => v.iter().map(String::as_str).collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Long values are cut in messages so one bad cell cannot flood the report.
fn shown(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{:?}...", &s[..at]),
        None => format!("{s:?}"),
    }
}

fn int<T: FromStr>(name: &str, s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name} {} is not a valid non-negative integer", shown(s)))
}

fn millis(name: &str, s: &str) -> Result<UnixMillis, String> {
    let t: u64 = int(name, s)?;
    if t < MIN_PLAUSIBLE_MS {
        return Err(format!(
            "{name} {t} is before 1973: times are unix milliseconds (seconds given?)"
        ));
    }
    Ok(UnixMillis(t))
}

fn opt_millis(row: &Row<'_>, name: &str) -> Result<Option<UnixMillis>, String> {
    row.text(name)?.map(|s| millis(name, s)).transpose()
}

fn code<T: Named>(name: &str, s: &str) -> Result<T, String> {
    T::from_label(&s.to_ascii_lowercase()).ok_or_else(|| {
        format!(
            "unknown {name} {}: expected one of {}",
            shown(s),
            T::labels()
        )
    })
}

fn id_list<T>(row: &Row<'_>, name: &str, wrap: fn(u32) -> T) -> Result<Vec<T>, String> {
    row.list(name)
        .into_iter()
        .map(|s| int::<u32>(name, s).map(wrap))
        .collect()
}

/// Checks an ID-card number's shape without ever repeating it.
fn id_card(row: &Row<'_>) -> Result<Option<String>, String> {
    let Some(raw) = row.text("id_card")? else {
        return Ok(None);
    };
    let number = key::normalise_id_card(raw);
    let len = number.chars().count();
    let alnum = number.chars().all(|c| c.is_ascii_alphanumeric());
    if !(6..=32).contains(&len) || !alnum {
        let what = if alnum {
            ""
        } else {
            ", not all letters or digits"
        };
        return Err(format!(
            "id_card must be 6 to 32 letters or digits (this one has {len} characters{what})"
        ));
    }
    Ok(Some(number))
}

fn qr_tokens(row: &Row<'_>) -> Result<Vec<String>, String> {
    row.list("qr_tokens")
        .into_iter()
        .map(|t| {
            if t.len() > 256 || t.chars().any(char::is_control) {
                Err(format!(
                    "qr token {} is longer than 256 bytes or has control characters",
                    shown(t)
                ))
            } else {
                Ok(t.to_owned())
            }
        })
        .collect()
}

impl ImportRecord for SubjectRecord {
    const NAME: &'static str = "subject";
    const COLUMNS: &'static [&'static str] = &[
        "subject",
        "category",
        "home_market",
        "markets",
        "zones",
        "valid_from",
        "valid_until",
        "id_card",
        "qr_tokens",
        "status",
    ];
    const REQUIRED: &'static [&'static str] = &["subject", "category", "home_market"];

    fn unique_key(&self) -> Option<u64> {
        Some(self.subject.0)
    }

    fn credentials(&self) -> Vec<(&'static str, &str)> {
        let card = self.id_card.iter().map(|c| ("ID card", c.as_str()));
        let qr = self
            .qr_tokens
            .iter()
            .map(|t| ("staff QR token", t.as_str()));
        card.chain(qr).collect()
    }

    fn from_row(row: &Row<'_>) -> Result<Self, String> {
        let valid_from = opt_millis(row, "valid_from")?;
        let valid_until = opt_millis(row, "valid_until")?;
        if let (Some(from), Some(until)) = (valid_from, valid_until)
            && from > until
        {
            return Err(format!("valid_from {from} is after valid_until {until}"));
        }
        let status = match row.text("status")? {
            None => SubjectStatus::Active,
            Some(s) => code("status", s)?,
        };
        Ok(Self {
            subject: SubjectId(int("subject", row.required("subject")?)?),
            category: code("category", row.required("category")?)?,
            home_market: MarketId(int("home_market", row.required("home_market")?)?),
            markets: id_list(row, "markets", MarketId)?,
            zones: id_list(row, "zones", ZoneId)?,
            valid_from,
            valid_until,
            id_card: id_card(row)?,
            qr_tokens: qr_tokens(row)?,
            status,
        })
    }
}

impl ImportRecord for HealthRecord {
    const NAME: &'static str = "health record";
    const COLUMNS: &'static [&'static str] = &[
        "subject",
        "test_at",
        "test_result",
        "vaccine_doses",
        "health_code",
        "travel_code",
        "updated_at",
    ];
    const REQUIRED: &'static [&'static str] = &[
        "subject",
        "vaccine_doses",
        "health_code",
        "travel_code",
        "updated_at",
    ];

    fn unique_key(&self) -> Option<u64> {
        None // a feed may carry several records per person; the newest wins
    }

    fn from_row(row: &Row<'_>) -> Result<Self, String> {
        let test_at = opt_millis(row, "test_at")?;
        let test_result = match row.text("test_result")? {
            None => None,
            Some(s) if s.eq_ignore_ascii_case("empty") || s.eq_ignore_ascii_case("none") => None,
            Some(s) => Some(code("test_result", s)?),
        };
        if test_result.is_some() && test_at.is_none() {
            return Err("test_result is given but test_at is missing".to_owned());
        }
        let colour = |name| code::<CodeColour>(name, row.required(name)?);
        Ok(Self {
            subject: SubjectId(int("subject", row.required("subject")?)?),
            test_at,
            test_result,
            vaccine_doses: int("vaccine_doses", row.required("vaccine_doses")?)
                .map_err(|e| format!("{e} (0 to 255)"))?,
            health_code: colour("health_code")?,
            travel_code: colour("travel_code")?,
            updated_at: millis("updated_at", row.required("updated_at")?)?,
        })
    }
}

impl ImportRecord for GateInfo {
    const NAME: &'static str = "gate";
    const COLUMNS: &'static [&'static str] = &["gate", "market", "zone", "name"];
    const REQUIRED: &'static [&'static str] = &["gate", "market", "zone"];

    fn unique_key(&self) -> Option<u64> {
        Some(u64::from(self.gate.0))
    }

    fn from_row(row: &Row<'_>) -> Result<Self, String> {
        let name = row.text("name")?.unwrap_or_default();
        if name.len() > 200 {
            return Err(format!("name {} is longer than 200 bytes", shown(name)));
        }
        Ok(Self {
            gate: GateId(int("gate", row.required("gate")?)?),
            market: MarketId(int("market", row.required("market")?)?),
            zone: ZoneId(int("zone", row.required("zone")?)?),
            name: name.to_owned(),
        })
    }
}

/// Reads records of type `T` row by row, from CSV or JSON Lines.
#[derive(Debug)]
pub struct RowReader<R, T> {
    source: Source<R>,
    /// The line the last row started on.
    line: usize,
    /// CSV: for each header position, its index in `T::COLUMNS`.
    header: Vec<usize>,
    cells: Vec<Cell>,
    record: PhantomData<fn() -> T>,
}

/// Where rows come from: CSV records (which may span lines), or JSON Lines.
#[derive(Debug)]
enum Source<R> {
    Csv {
        reader: csv::Reader<NewlineOffsets<R>>,
        row: csv::ByteRecord,
    },
    Lines {
        input: R,
        buf: Vec<u8>,
        bytes: u64,
    },
}

impl<R: BufRead, T: ImportRecord> RowReader<R, T> {
    /// Starts reading; for CSV, reads and checks the header row.
    ///
    /// # Errors
    /// [`ImportError::Header`] for a header naming unknown or repeated columns or missing a
    /// required one, [`ImportError::Io`] if the input cannot be read.
    pub fn new(input: R, format: ImportFormat) -> Result<Self, ImportError> {
        let source = match format {
            ImportFormat::Csv => Source::Csv {
                // Headers, field counts and trimming are checked here, to give every bad row
                // its own line and reason; the crate does the quoting.
                reader: csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .trim(csv::Trim::All)
                    .from_reader(NewlineOffsets::new(input)),
                row: csv::ByteRecord::new(),
            },
            ImportFormat::JsonLines => Source::Lines {
                input,
                buf: Vec::new(),
                bytes: 0,
            },
        };
        let mut reader = Self {
            source,
            line: 0,
            header: Vec::new(),
            cells: vec![Cell::Empty; T::COLUMNS.len()],
            record: PhantomData,
        };
        if format == ImportFormat::Csv {
            reader.read_header()?;
        }
        Ok(reader)
    }

    /// The number of the line the last row started on.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Bytes consumed so far, for progress against the file size.
    pub fn bytes_read(&self) -> u64 {
        match &self.source {
            Source::Csv { reader, .. } => reader.position().byte(),
            Source::Lines { bytes, .. } => *bytes,
        }
    }

    /// The next record, or the reason its row is bad; `None` at the end of the input.
    ///
    /// # Errors
    /// [`ImportError::Io`] if the input cannot be read.
    pub fn next_record(&mut self) -> Result<Option<Result<T, RowError>>, ImportError> {
        let filled = match &mut self.source {
            Source::Csv { .. } => match self.next_csv_row()? {
                None => return Ok(None),
                Some(fields) => {
                    fields.and_then(|fields| fill_csv(fields, &self.header, &mut self.cells))
                }
            },
            Source::Lines { .. } => match self.next_line()? {
                None => return Ok(None),
                Some(text) => text.and_then(|text| fill_json::<T>(&text, &mut self.cells)),
            },
        };
        let record = filled.and_then(|()| {
            T::from_row(&Row {
                columns: T::COLUMNS,
                cells: &self.cells,
            })
        });
        let line = self.line;
        Ok(Some(record.map_err(|reason| RowError { line, reason })))
    }

    /// The next CSV row's fields as text (blank rows skipped), or why they are not text.
    fn next_csv_row(&mut self) -> Result<Option<Result<Vec<String>, String>>, ImportError> {
        let Source::Csv { reader, row } = &mut self.source else {
            return Ok(None);
        };
        loop {
            let more = reader.read_byte_record(row).map_err(|e| ImportError::Io {
                line: self.line,
                source: std::io::Error::other(e),
            })?;
            if !more {
                return Ok(None);
            }
            // The crate's own line count skips blank lines; count them from the row's offset.
            let start = row.position().map_or(0, csv::Position::byte);
            self.line = usize::try_from(reader.get_mut().line_of(start)).unwrap_or(usize::MAX);
            if row.iter().all(<[u8]>::is_empty) {
                continue; // a blank line (or a row of empty fields)
            }
            let fields = row
                .iter()
                .map(|f| std::str::from_utf8(f).map(str::to_owned))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "the row is not valid UTF-8".to_owned());
            return Ok(Some(fields));
        }
    }

    /// The next non-blank line of a JSON Lines file, without its line ending.
    fn next_line(&mut self) -> Result<Option<Result<String, String>>, ImportError> {
        let Source::Lines { input, buf, bytes } = &mut self.source else {
            return Ok(None);
        };
        loop {
            buf.clear();
            let n = input
                .read_until(b'\n', buf)
                .map_err(|source| ImportError::Io {
                    line: self.line,
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            *bytes += n as u64;
            self.line += 1;
            let mut line = buf.as_slice();
            if self.line == 1 {
                // Editors and spreadsheets often save UTF-8 with a byte-order mark.
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            let Ok(text) = std::str::from_utf8(line) else {
                return Ok(Some(Err("the line is not valid UTF-8".to_owned())));
            };
            let text = text.trim_end_matches(['\n', '\r']);
            if !text.trim().is_empty() {
                return Ok(Some(Ok(text.to_owned())));
            }
        }
    }

    fn read_header(&mut self) -> Result<(), ImportError> {
        let Some(names) = self.next_csv_row()? else {
            return Ok(()); // an empty file: no rows
        };
        let line = self.line;
        let bad = |reason: String| ImportError::Header(RowError { line, reason });
        for name in names.map_err(bad)? {
            let name = name.trim().to_ascii_lowercase();
            let Some(idx) = T::COLUMNS.iter().position(|c| *c == name) else {
                return Err(bad(format!(
                    "unknown column {}: {} files have the columns {}",
                    shown(&name),
                    T::NAME,
                    T::COLUMNS.join(",")
                )));
            };
            if self.header.contains(&idx) {
                return Err(bad(format!("column {name} appears twice")));
            }
            self.header.push(idx);
        }
        if let Some(missing) = T::REQUIRED
            .iter()
            .find(|r| !self.header.iter().any(|&i| T::COLUMNS.get(i) == Some(*r)))
        {
            return Err(bad(format!("the required column {missing} is missing")));
        }
        Ok(())
    }
}

/// A reader that remembers where the non-blank lines it passed on start, and their numbers,
/// so that a row's byte offset (which the `csv` crate gives from the end of the row before,
/// blank lines included) can be turned into the number of the line the row starts on. Offsets
/// are asked for in increasing order, so only the lines not yet numbered are kept.
#[derive(Debug)]
struct NewlineOffsets<R> {
    inner: R,
    /// Bytes passed on so far.
    read: u64,
    /// The number of the line being read, its start, and whether it has content yet.
    line: u64,
    line_start: u64,
    line_has_content: bool,
    /// `(start offset, line number)` of non-blank lines not yet asked about.
    starts: std::collections::VecDeque<(u64, u64)>,
}

impl<R> NewlineOffsets<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            read: 0,
            line: 1,
            line_start: 0,
            line_has_content: false,
            starts: std::collections::VecDeque::new(),
        }
    }

    /// The number of the first non-blank line starting at or after `offset`.
    fn line_of(&mut self, offset: u64) -> u64 {
        while self
            .starts
            .front()
            .is_some_and(|&(start, _)| start < offset)
        {
            self.starts.pop_front();
        }
        self.starts.front().map_or(self.line, |&(_, line)| line)
    }

    fn scan(&mut self, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if !self.line_has_content && b != b'\r' && b != b'\n' {
                self.line_has_content = true;
                self.starts.push_back((self.line_start, self.line));
            }
            if b == b'\n' {
                self.line += 1;
                self.line_start = self.read + i as u64 + 1;
                self.line_has_content = false;
            }
        }
    }
}

impl<R: std::io::Read> std::io::Read for NewlineOffsets<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

fn fill_csv(fields: Vec<String>, header: &[usize], cells: &mut [Cell]) -> Result<(), String> {
    if fields.len() != header.len() {
        return Err(format!(
            "expected {} fields as in the header, found {}",
            header.len(),
            fields.len()
        ));
    }
    cells.fill(Cell::Empty);
    for (field, &idx) in fields.into_iter().zip(header) {
        if let Some(cell) = cells.get_mut(idx)
            && !field.is_empty()
        {
            *cell = Cell::Text(field);
        }
    }
    Ok(())
}

fn fill_json<T: ImportRecord>(text: &str, cells: &mut [Cell]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("expected a JSON object".to_owned());
    };
    cells.fill(Cell::Empty);
    for (name, value) in object {
        let Some(cell) = T::COLUMNS
            .iter()
            .position(|c| *c == name)
            .and_then(|i| cells.get_mut(i))
        else {
            return Err(format!(
                "unknown field {}: {} records have the fields {}",
                shown(&name),
                T::NAME,
                T::COLUMNS.join(", ")
            ));
        };
        *cell = json_cell(&name, value)?;
    }
    Ok(())
}

fn json_cell(name: &str, value: serde_json::Value) -> Result<Cell, String> {
    use serde_json::Value;
    let scalar = |v: Value| match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Value::Null => Ok(Cell::Empty),
        Value::Array(items) => items
            .into_iter()
            .map(|v| scalar(v).ok_or_else(|| format!("{name} items must be strings or numbers")))
            .collect::<Result<_, _>>()
            .map(Cell::List),
        Value::Object(_) => Err(format!("{name} must not be an object")),
        v => Ok(scalar(v).map_or(Cell::Empty, Cell::Text)),
    }
}

/// A whole file read: the good records, and the bad rows.
#[derive(Debug)]
pub struct ParsedFile<T> {
    /// The records of the good rows, in file order.
    pub records: Vec<T>,
    /// The 1-based line of each record (parallel to `records`).
    pub lines: Vec<usize>,
    /// The first [`MAX_LISTED_ERRORS`] bad rows.
    pub errors: Vec<RowError>,
    /// How many rows were bad in all.
    pub bad_rows: usize,
    /// The bad rows grouped by reason, in order of first appearance: up to
    /// [`MAX_LISTED_ERRORS`] distinct reasons, each counted over the whole file. A file of
    /// the wrong kind fails every row the same way; this says so once.
    pub problems: Vec<BadRows>,
}

/// Bad rows that share one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRows {
    /// What is wrong with them.
    pub reason: String,
    /// How many rows.
    pub count: usize,
    /// The first such row's line.
    pub first_line: usize,
    /// The last such row's line.
    pub last_line: usize,
}

impl std::fmt::Display for BadRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 1 {
            write!(f, "line {}: {}", self.first_line, self.reason)
        } else {
            write!(
                f,
                "{} rows, lines {} to {}: {}",
                self.count, self.first_line, self.last_line, self.reason
            )
        }
    }
}

impl<T> ParsedFile<T> {
    /// Records a bad row.
    fn refuse(&mut self, e: RowError) {
        self.bad_rows += 1;
        let room = self.problems.len() < MAX_LISTED_ERRORS;
        match self.problems.iter_mut().find(|p| p.reason == e.reason) {
            Some(p) => {
                p.count += 1;
                p.last_line = e.line;
            }
            None if room => self.problems.push(BadRows {
                reason: e.reason.clone(),
                count: 1,
                first_line: e.line,
                last_line: e.line,
            }),
            None => {}
        }
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(e);
        }
    }

    /// Drops the good records of the `refused` rows (refused after parsing, e.g. by the
    /// registry), counting them as bad rows with their reasons.
    pub fn refuse_lines(&mut self, refused: Vec<RowError>) {
        let lines: std::collections::HashSet<usize> = refused.iter().map(|e| e.line).collect();
        let mut kept_lines = Vec::with_capacity(self.lines.len());
        let mut kept = Vec::with_capacity(self.records.len());
        for (record, line) in std::mem::take(&mut self.records)
            .into_iter()
            .zip(&self.lines)
        {
            if !lines.contains(line) {
                kept.push(record);
                kept_lines.push(*line);
            }
        }
        self.records = kept;
        self.lines = kept_lines;
        for e in refused {
            self.refuse(e);
        }
    }

    /// Rows that parsed plus rows that did not.
    pub fn rows(&self) -> usize {
        self.records.len() + self.bad_rows
    }
}

/// Reads every row of `input`. Records repeating the unique key of an earlier row (the same
/// subject or gate twice), or a credential that an earlier row gives someone else, are bad
/// rows. `progress(rows, bytes)` is called every 1,024 rows.
///
/// # Errors
/// A bad CSV header or an unreadable input; row errors are collected, not returned.
pub fn read_all<T: ImportRecord, R: BufRead>(
    input: R,
    format: ImportFormat,
    mut progress: impl FnMut(usize, u64),
) -> Result<ParsedFile<T>, ImportError> {
    let mut reader = RowReader::<R, T>::new(input, format)?;
    let mut parsed = ParsedFile {
        records: Vec::new(),
        lines: Vec::new(),
        errors: Vec::new(),
        bad_rows: 0,
        problems: Vec::new(),
    };
    let mut seen: HashMap<u64, usize> = HashMap::new();
    // Credential -> (line, owner's unique key). Only the kind and the line are ever shown:
    // an ID card number is personal data and never repeated in a message.
    let mut credentials: HashMap<(&'static str, String), (usize, Option<u64>)> = HashMap::new();
    let mut rows = 0usize;
    while let Some(result) = reader.next_record()? {
        rows += 1;
        let line = reader.line();
        let checked = result.and_then(|record| match record.unique_key() {
            Some(key) => match seen.insert(key, line) {
                Some(first) => {
                    seen.insert(key, first);
                    Err(RowError {
                        line,
                        reason: format!("{} {key} already appears on line {first}", T::NAME),
                    })
                }
                None => Ok(record),
            },
            None => Ok(record),
        });
        let checked = checked.and_then(|record| {
            let owner = record.unique_key();
            for (kind, value) in record.credentials() {
                let entry = credentials
                    .entry((kind, value.to_owned()))
                    .or_insert((line, owner));
                if entry.1 != owner {
                    return Err(RowError {
                        line,
                        reason: format!(
                            "its {kind} is also on line {} (another {}); each belongs to one \
                             person only",
                            entry.0,
                            T::NAME
                        ),
                    });
                }
            }
            Ok(record)
        });
        match checked {
            Ok(record) => {
                parsed.records.push(record);
                parsed.lines.push(line);
            }
            Err(e) => parsed.refuse(e),
        }
        if rows.is_multiple_of(1024) {
            progress(rows, reader.bytes_read());
        }
    }
    progress(rows, reader.bytes_read());
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use gatewarden_protocol::{Category, CodeColour, TestResult};

    use super::*;

    fn subjects_csv(text: &str) -> ParsedFile<SubjectRecord> {
        read_all(text.as_bytes(), ImportFormat::Csv, |_, _| {}).unwrap()
    }

    fn subjects_jsonl(text: &str) -> ParsedFile<SubjectRecord> {
        read_all(text.as_bytes(), ImportFormat::JsonLines, |_, _| {}).unwrap()
    }

    fn health_csv(text: &str) -> ParsedFile<HealthRecord> {
        read_all(text.as_bytes(), ImportFormat::Csv, |_, _| {}).unwrap()
    }

    /// The single error of a one-bad-row file: (line, reason).
    fn only_error<T>(parsed: &ParsedFile<T>) -> (usize, &str) {
        assert_eq!(parsed.bad_rows, 1, "{:?}", parsed.errors);
        (parsed.errors[0].line, parsed.errors[0].reason.as_str())
    }

    const HEADER: &str = "subject,category,home_market,markets,zones,valid_from,valid_until,id_card,qr_tokens,status";

    #[test]
    fn csv_subjects_parse_every_field() {
        let text = format!(
            "\u{feff}{HEADER}\r\n\
             1,merchant,1,1;2,3,1780000000000,,11010519491231002x,qr-a;qr-b,active\r\n\
             \r\n\
             2,Service_Worker,2,,,,,,,\n"
        );
        let parsed = subjects_csv(&text);
        assert_eq!(parsed.bad_rows, 0, "{:?}", parsed.errors);
        let [a, b] = parsed.records.as_slice() else {
            panic!("{:?}", parsed.records)
        };
        assert_eq!(a.subject, SubjectId(1));
        assert_eq!(a.category, Category::Merchant);
        assert_eq!(a.markets, vec![MarketId(1), MarketId(2)]);
        assert_eq!(a.zones, vec![ZoneId(3)]);
        assert_eq!(a.valid_from, Some(UnixMillis(1_780_000_000_000)));
        assert_eq!(a.valid_until, None);
        assert_eq!(
            a.id_card.as_deref(),
            Some("11010519491231002X"),
            "normalised"
        );
        assert_eq!(a.qr_tokens, vec!["qr-a".to_owned(), "qr-b".to_owned()]);
        assert_eq!(b.category, Category::ServiceWorker);
        assert!(b.markets.is_empty() && b.id_card.is_none() && b.qr_tokens.is_empty());
        assert_eq!(b.status, SubjectStatus::Active);
    }

    #[test]
    fn csv_columns_may_be_reordered_or_left_out() {
        let parsed = subjects_csv("home_market,subject,category\n4,9,buyer\n");
        assert_eq!(parsed.records[0].subject, SubjectId(9));
        assert_eq!(parsed.records[0].home_market, MarketId(4));
    }

    #[test]
    fn jsonl_subjects_parse_lists_and_numbers() {
        let parsed = subjects_jsonl(
            r#"{"subject": 5, "category": "staff", "home_market": "2", "markets": [1, 2], "zones": [], "qr_tokens": ["t1"], "status": "blocklisted", "valid_until": null}
{"subject": 6, "category": "shopper", "home_market": 1}"#,
        );
        assert_eq!(parsed.bad_rows, 0, "{:?}", parsed.errors);
        assert_eq!(parsed.records[0].markets, vec![MarketId(1), MarketId(2)]);
        assert_eq!(parsed.records[0].status, SubjectStatus::Blocklisted);
        assert_eq!(parsed.records[0].home_market, MarketId(2));
        assert_eq!(parsed.records[1].category, Category::Shopper);
    }

    #[test]
    fn bad_subject_rows_give_line_and_reason() {
        let cases: &[(&str, &str)] = &[
            (
                "x,merchant,1,,,,,,,",
                "subject \"x\" is not a valid non-negative integer",
            ),
            ("-1,merchant,1,,,,,,,", "subject \"-1\""),
            (",merchant,1,,,,,,,", "subject is missing"),
            (
                "1,farmer,1,,,,,,,",
                "unknown category \"farmer\": expected one of service_worker",
            ),
            ("1,merchant,,,,,,,,", "home_market is missing"),
            ("1,merchant,1,1;x,,,,,,", "markets \"x\""),
            ("1,merchant,1,,99999999999,,,,,", "zones \"99999999999\""),
            ("1,merchant,1,,,1780000000,,,,", "seconds given?"),
            (
                "1,merchant,1,,,1780000000002,1780000000001,,,",
                "is after valid_until",
            ),
            (
                "1,merchant,1,,,,,1234,,",
                "id_card must be 6 to 32 letters or digits (this one has 4",
            ),
            ("1,merchant,1,,,,,1101-0519,,", "not all letters or digits"),
            ("1,merchant,1,,,,,,,gone", "unknown status \"gone\""),
            (
                "1,merchant,1,,,,,,",
                "expected 10 fields as in the header, found 9",
            ),
            ("1,merchant,1,,,,,,,,", "found 11"),
            // An unterminated quote runs to the end of the file: one long second field.
            (
                "1,\"merchant,1,,,,,,,",
                "expected 10 fields as in the header, found 2",
            ),
            // RFC 4180 leniency (the csv crate's): stray quotes are text.
            ("1,\"merchant\"x,1,,,,,,,", "unknown category \"merchantx\""),
            ("1,merch\"ant,1,,,,,,,", "unknown category \"merch\\\"ant\""),
        ];
        for (row, expected) in cases {
            let parsed = subjects_csv(&format!("{HEADER}\n2,buyer,1,,,,,,,\n\n{row}\n"));
            let (line, reason) = only_error(&parsed);
            assert_eq!(line, 4, "{row}");
            assert!(reason.contains(expected), "{row}: {reason}");
            assert_eq!(parsed.records.len(), 1, "the good row is kept");
        }
    }

    #[test]
    fn id_card_errors_never_repeat_the_number() {
        let parsed = subjects_csv(&format!(
            "{HEADER}\n1,merchant,1,,,,,1101051949123100299999999999999999,,\n"
        ));
        let (_, reason) = only_error(&parsed);
        assert!(!reason.contains("110105"), "{reason}");
    }

    #[test]
    fn bad_jsonl_rows_give_line_and_reason() {
        let cases: &[(&str, &str)] = &[
            (
                "{\"subject\": 1, \"category\": \"merchant\"",
                "invalid JSON",
            ),
            ("[1, 2]", "expected a JSON object"),
            (
                "{\"subject\": 1, \"category\": \"merchant\", \"home_market\": 1, \"colour\": 1}",
                "unknown field \"colour\"",
            ),
            (
                "{\"subject\": 1.5, \"category\": \"merchant\", \"home_market\": 1}",
                "subject \"1.5\"",
            ),
            (
                "{\"subject\": [1], \"category\": \"merchant\", \"home_market\": 1}",
                "must be a single value",
            ),
            (
                "{\"subject\": 1, \"category\": \"merchant\", \"home_market\": 1, \"markets\": [{}]}",
                "markets items must be strings or numbers",
            ),
            (
                "{\"subject\": 1, \"category\": {}, \"home_market\": 1}",
                "category must not be an object",
            ),
        ];
        for (row, expected) in cases {
            let text =
                format!("{{\"subject\": 2, \"category\": \"buyer\", \"home_market\": 1}}\n{row}\n");
            let parsed = subjects_jsonl(&text);
            let (line, reason) = only_error(&parsed);
            assert_eq!(line, 2, "{row}");
            assert!(reason.contains(expected), "{row}: {reason}");
        }
    }

    #[test]
    fn invalid_utf8_is_a_bad_row() {
        let mut bytes = format!("{HEADER}\n").into_bytes();
        bytes.extend_from_slice(b"1,merchant,1,,,,,,,\xff\n");
        let parsed: ParsedFile<SubjectRecord> =
            read_all(bytes.as_slice(), ImportFormat::Csv, |_, _| {}).unwrap();
        assert_eq!(only_error(&parsed), (2, "the row is not valid UTF-8"));
    }

    #[test]
    fn repeated_subject_is_a_bad_row() {
        let parsed =
            subjects_csv("subject,category,home_market\n7,buyer,1\n8,buyer,1\n7,staff,1\n");
        assert_eq!(
            only_error(&parsed),
            (4, "subject 7 already appears on line 2")
        );
        assert_eq!(parsed.records.len(), 2);
    }

    #[test]
    fn bad_headers_are_refused() {
        let header_err = |text: &str| match read_all::<SubjectRecord, _>(
            text.as_bytes(),
            ImportFormat::Csv,
            |_, _| {},
        ) {
            Err(ImportError::Header(e)) => e,
            other => panic!("{other:?}"),
        };
        let e = header_err("subject,category,home_market,colour\n");
        assert_eq!(e.line, 1);
        assert!(
            e.reason.contains("unknown column \"colour\""),
            "{}",
            e.reason
        );
        assert!(
            header_err("subject,category\n")
                .reason
                .contains("home_market is missing")
        );
        assert!(
            header_err("subject,subject,category,home_market\n")
                .reason
                .contains("twice")
        );
    }

    #[test]
    fn an_id_card_on_two_rows_is_a_bad_row_naming_the_first() {
        let parsed = subjects_csv(
            "subject,category,home_market,id_card\n7,buyer,1,110101199001011234\n\
             8,buyer,1,110101199001015678\n9,buyer,1,110101199001011234\n",
        );
        let (line, reason) = only_error(&parsed);
        assert_eq!(line, 4);
        assert!(reason.contains("also on line 2"), "{reason}");
        assert!(
            !reason.contains("1234"),
            "the number must not be repeated: {reason}"
        );
        assert_eq!(parsed.lines, vec![2, 3]);
    }

    #[test]
    fn the_same_problem_on_every_row_is_one_group() {
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!("{{\"gate\": {i}, \"market\": 1, \"zone\": 1}}\n"));
        }
        text.push_str("{\"subject\": 3, \"category\": \"nobody\", \"home_market\": 1}\n");
        let parsed = subjects_jsonl(&text);
        assert_eq!(parsed.bad_rows, 51);
        assert_eq!(parsed.problems.len(), 2, "{:?}", parsed.problems);
        let wrong_kind = &parsed.problems[0];
        assert_eq!(
            (
                wrong_kind.count,
                wrong_kind.first_line,
                wrong_kind.last_line
            ),
            (50, 1, 50)
        );
        assert!(
            wrong_kind
                .to_string()
                .starts_with("50 rows, lines 1 to 50: unknown field \"gate\"")
        );
        assert_eq!(parsed.problems[1].count, 1);
        assert!(parsed.problems[1].to_string().starts_with("line 51: "));
    }

    #[test]
    fn refused_lines_leave_the_records_and_count_as_bad() {
        let mut parsed =
            subjects_csv("subject,category,home_market\n7,buyer,1\n8,buyer,1\n9,buyer,1\n");
        parsed.refuse_lines(vec![RowError {
            line: 3,
            reason: "taken".to_owned(),
        }]);
        let ids: Vec<u64> = parsed.records.iter().map(|r| r.subject.0).collect();
        assert_eq!(ids, vec![7, 9]);
        assert_eq!(parsed.lines, vec![2, 4]);
        assert_eq!(parsed.bad_rows, 1);
        assert_eq!(parsed.rows(), 3);
    }

    #[test]
    fn many_bad_rows_are_counted_and_the_list_capped() {
        let mut text = String::from("subject,category,home_market\n");
        for i in 0..50 {
            text.push_str(&format!("{i},nobody,1\n"));
        }
        let parsed = subjects_csv(&text);
        assert_eq!(parsed.bad_rows, 50);
        assert_eq!(parsed.errors.len(), MAX_LISTED_ERRORS);
        assert_eq!(parsed.errors[0].line, 2);
    }

    #[test]
    fn health_rows_parse_and_check_consistency() {
        let header = "subject,test_at,test_result,vaccine_doses,health_code,travel_code,updated_at";
        let parsed = health_csv(&format!(
            "{header}\n1,1780000000000,negative,3,green,Yellow,1780000001000\n2,,,0,red,green,1780000001000\n3,,empty,2,green,green,1780000001000\n"
        ));
        assert_eq!(parsed.bad_rows, 0, "{:?}", parsed.errors);
        let r = &parsed.records[0];
        assert_eq!(r.test_result, Some(TestResult::Negative));
        assert_eq!((r.vaccine_doses, r.travel_code), (3, CodeColour::Yellow));
        assert_eq!(parsed.records[1].test_at, None);
        assert_eq!(parsed.records[2].test_result, None);
        let cases: &[(&str, &str)] = &[
            (
                "1,,negative,3,green,green,1780000001000",
                "test_result is given but test_at is missing",
            ),
            (
                "1,1780000000000,maybe,3,green,green,1780000001000",
                "unknown test_result \"maybe\"",
            ),
            (
                "1,1780000000000,negative,300,green,green,1780000001000",
                "vaccine_doses \"300\"",
            ),
            (
                "1,1780000000000,negative,3,blue,green,1780000001000",
                "unknown health_code \"blue\"",
            ),
            (
                "1,1780000000000,negative,3,green,,1780000001000",
                "travel_code is missing",
            ),
            (
                "1,1780000000000,negative,3,green,green,",
                "updated_at is missing",
            ),
        ];
        for (row, expected) in cases {
            let parsed = health_csv(&format!("{header}\n{row}\n"));
            let (line, reason) = only_error(&parsed);
            assert_eq!(line, 2);
            assert!(reason.contains(expected), "{row}: {reason}");
        }
    }

    #[test]
    fn gate_rows_parse() {
        let parsed: ParsedFile<GateInfo> = read_all(
            "gate,market,zone,name\n1,1,2,\"North gate, hall 2\"\n2,1,3,\n".as_bytes(),
            ImportFormat::Csv,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(parsed.bad_rows, 0, "{:?}", parsed.errors);
        assert_eq!(parsed.records[0].name, "North gate, hall 2");
        assert_eq!(parsed.records[1].name, "");
        let dup: ParsedFile<GateInfo> = read_all(
            "{\"gate\":1,\"market\":1,\"zone\":1}\n{\"gate\":1,\"market\":2,\"zone\":1}\n"
                .as_bytes(),
            ImportFormat::JsonLines,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(only_error(&dup), (2, "gate 1 already appears on line 1"));
    }

    #[test]
    fn csv_fields_may_be_quoted_and_span_lines() {
        let parsed = subjects_csv(
            "subject,category,home_market,qr_tokens\n\
             1, merchant ,\"1\",\"qr-a;qr\"\"b\"\"\"\n\
             \n\
             3,buyer,1,\n\
             4,farmer,1,\n",
        );
        assert_eq!(parsed.records.len(), 2, "{:?}", parsed.errors);
        assert_eq!(parsed.records[0].category, Category::Merchant, "trimmed");
        assert_eq!(parsed.records[0].qr_tokens, vec!["qr-a", "qr\"b\""]);
        assert_eq!(only_error(&parsed).0, 5, "blank lines count");
        let gates: ParsedFile<GateInfo> = read_all(
            "gate,market,zone,name\n1,1,1,\"North\ngate, by the bus stop\"\n2,1,1,South\n2,1,1,x\n"
                .as_bytes(),
            ImportFormat::Csv,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(gates.records.len(), 2, "{:?}", gates.errors);
        assert_eq!(gates.records[0].name, "North\ngate, by the bus stop");
        // The quoted newline counts: the repeated gate starts on line 5.
        assert_eq!(only_error(&gates), (5, "gate 2 already appears on line 4"));
    }

    #[test]
    fn a_utf8_bom_is_ignored() {
        let parsed = subjects_csv("\u{feff}subject,category,home_market\n1,buyer,1\n");
        assert_eq!(parsed.records.len(), 1, "{:?}", parsed.errors);
        let parsed: ParsedFile<SubjectRecord> = read_all(
            "\u{feff}{\"subject\":1,\"category\":\"buyer\",\"home_market\":1}\n".as_bytes(),
            ImportFormat::JsonLines,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(parsed.records.len(), 1, "{:?}", parsed.errors);
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            ImportFormat::from_path(Path::new("a/b.CSV")),
            Some(ImportFormat::Csv)
        );
        assert_eq!(
            ImportFormat::from_path(Path::new("b.ndjson")),
            Some(ImportFormat::JsonLines)
        );
        assert_eq!(
            ImportFormat::from_path(Path::new("b.jsonl")),
            Some(ImportFormat::JsonLines)
        );
        assert_eq!(ImportFormat::from_path(Path::new("b.txt")), None);
    }

    #[test]
    fn progress_is_reported() {
        let mut text = String::from("gate,market,zone\n");
        for i in 0..3000 {
            text.push_str(&format!("{i},1,1\n"));
        }
        let mut calls = Vec::new();
        let parsed: ParsedFile<GateInfo> =
            read_all(text.as_bytes(), ImportFormat::Csv, |rows, bytes| {
                calls.push((rows, bytes))
            })
            .unwrap();
        assert_eq!(parsed.records.len(), 3000);
        assert_eq!(calls.first().map(|c| c.0), Some(1024));
        assert_eq!(calls.last(), Some(&(3000, text.len() as u64)));
    }
}
