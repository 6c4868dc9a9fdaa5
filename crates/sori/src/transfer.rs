//! `sori import` and `sori export`: bulk moves of users and events through files (CSV with
//! a header row, or NDJSON), going through the same validation and write path as the APIs.
//! Bad lines are reported with their line numbers and skipped; re-running a file does not
//! duplicate anything (users are upserts by member id, events carry a `messageId` derived
//! from the line's content).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::Context;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sori_app::App;
use sori_app::auth::{ChannelInfo, info_of};
use sori_app::secrets::{new_id, now_ms};
use sori_app::users::{Ingest, Source};
use sori_domain::activity::Activity;
use sori_domain::event::EventSource;
use sori_domain::field::{BUILTIN_FIELDS, builtin_unmaskable};
use sori_domain::import::{
    CsvTypes, FIELD_LINE_COLUMNS, FieldLine, Owner, USER_LINE_COLUMNS, WHOLE_LINE,
    check_csv_header, check_csv_width, csv_event, csv_field, csv_list_cell, csv_text, csv_user,
    event_line, field_line, from_sheet_safe, profile_field_column, sheet_safe, user_line,
};
use sori_domain::value::{NUL_REJECTED, escape_unseen, nul_path};
use sori_domain::{Invalid, ProfileField, Registry};
use sori_store::UserTarget;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Users (imported as upserts by member id; exported whole).
    Users,
    /// Events.
    Events,
    /// Profile field definitions (key, display name, type, sensitive flag) and the
    /// sensitive flags of built-in user fields (`scope: user`): moved before users, so Date
    /// and Datetime values keep their types and sensitive fields stay masked in the target.
    Fields,
}

/// File format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// The format a file name implies (`.csv`, else NDJSON).
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Self::Csv,
            _ => Self::Ndjson,
        }
    }
}

/// Lines written per store batch.
const CHUNK: usize = 1000;

/// The outcome of an import.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines stored.
    pub imported: u64,
    /// Event lines whose event was stored before (the file, or part of it, was imported
    /// already), and field lines the registry agrees with already: nothing written.
    pub already: u64,
    /// Lines skipped as invalid.
    pub skipped: u64,
}

/// Every channel of the store, by id.
pub async fn channels(app: &App) -> anyhow::Result<Vec<sori_store::Channel>> {
    let mut out = Vec::new();
    for id in app.store.channel_ids().await? {
        out.extend(app.store.channel(id).await?);
    }
    Ok(out)
}

/// Picks the channel: the given id, or the only channel of the store.
pub async fn channel(app: &App, id: Option<i64>) -> anyhow::Result<ChannelInfo> {
    let id = match id {
        Some(id) => id,
        None => {
            let ids = app.store.channel_ids().await?;
            match ids.as_slice() {
                [one] => *one,
                [] => anyhow::bail!(
                    "the store has no channel yet; run `sori serve` or `sori channel create` first"
                ),
                _ => {
                    let names: Vec<String> = channels(app)
                        .await?
                        .iter()
                        .map(|c| format!("{} ({})", c.id, c.name))
                        .collect();
                    anyhow::bail!(
                        "the store has {} channels; pick one with --channel: {}",
                        ids.len(),
                        names.join(", ")
                    )
                }
            }
        }
    };
    let ch = app
        .store
        .channel(id)
        .await?
        .with_context(|| format!("channel {id} does not exist"))?;
    Ok(info_of(ch))
}

/// One line to write, with its line number.
struct Pending {
    line: usize,
    ingest: Ingest,
}

/// Imports `path`, reporting bad lines on `errors` and progress on a bar.
pub async fn import(
    app: &App,
    ch: &ChannelInfo,
    kind: Kind,
    path: &Path,
    format: Format,
    errors: &mut dyn Write,
) -> anyhow::Result<Summary> {
    // A registry is small and written field by field; the line loop below is for users
    // and events.
    let users = match kind {
        Kind::Users => true,
        Kind::Events => false,
        Kind::Fields => return import_fields(app, ch, path, format, errors).await,
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} [{bar:30}] {msg} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let reader = BufReader::new(bar.wrap_read(file));
    let errors = &mut AboveBar {
        bar: &bar,
        out: errors,
    };
    // User columns start from the registered profile fields; event properties have none.
    let mut types = CsvTypes::new(&match users {
        true => Registry::new(app.store.profile_fields(ch.channel.id).await?),
        false => Registry::default(),
    });
    let mut summary = Summary::default();
    let mut pending: Vec<Pending> = Vec::with_capacity(CHUNK);
    let mut seen: HashMap<String, u32> = HashMap::new();
    let retention = ch.retention(now_ms());

    // Bad lines of the chunk being read, reported with the chunk's write errors in line
    // order once it is written.
    let mut held: Vec<(usize, String)> = Vec::new();
    let mut handle = |line: usize,
                      parsed: Result<Value, Invalid>,
                      pending: &mut Vec<Pending>,
                      summary: &mut Summary,
                      held: &mut Vec<(usize, String)>| {
        // Every way in refuses U+0000 alike (the APIs check whole bodies for it).
        let parsed = parsed.and_then(|v| match nul_path(&v, String::new()) {
            Some(path) => Err(Invalid::one(path, NUL_REJECTED)),
            None => Ok(v),
        });
        let ingest = parsed.and_then(|v| match users {
            true => user_ingest(&v),
            false => event_ingest(&v, &mut seen, retention),
        });
        match ingest {
            Ok(ingest) => {
                pending.push(Pending { line, ingest });
                true
            }
            Err(e) => {
                summary.skipped += 1;
                report(held, line, &e);
                false
            }
        }
    };

    let mut records = Records::open(reader, format, users)?;
    let headers = records.headers().to_vec();
    while let Some((line, record)) = records.next()? {
        // The column types a bad event row would have taught are forgotten with it: only
        // rows that are imported decide how later cells read.
        let mark = types.learned();
        let parsed = match record {
            Record::Json(parsed) => parsed,
            Record::Cells(cells) => cells.and_then(|cells| match users {
                true => Ok(csv_user(&headers, &cells, &mut types)),
                false => csv_event(&headers, &cells, &mut types),
            }),
        };
        let imported = handle(line, parsed, &mut pending, &mut summary, &mut held);
        if !users && !imported {
            types.forget_since(mark);
        }
        // Reports are held to be written in line order with the chunk's write errors; a
        // file of bad lines must not hold them all.
        if pending.len() >= CHUNK || held.len() >= CHUNK {
            flush(app, ch, &mut pending, &mut summary, &mut held, errors).await?;
            bar.set_message(format!(
                "{} imported, {} skipped",
                summary.imported, summary.skipped
            ));
        }
    }
    flush(app, ch, &mut pending, &mut summary, &mut held, errors).await?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Imports profile field definitions (`sori export fields`): a field the target lacks is
/// registered; one it has with the same type takes the line's name and sensitive flag; one
/// it has with another type is a bad line (a type cannot change under stored values).
/// Lines are applied one by one as they are read, so each report goes out at once; a
/// registry is small, so no progress bar is drawn.
async fn import_fields(
    app: &App,
    ch: &ChannelInfo,
    path: &Path,
    format: Format,
    errors: &mut dyn Write,
) -> anyhow::Result<Summary> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut records = Records::open(BufReader::new(file), format, false)?;
    let headers = records.headers().to_vec();
    let mut fields = Fields::load(app, ch.channel.id).await?;
    // The line each (scope, key) was applied from: a second line for it is refused.
    let mut on_line: HashMap<(bool, String), usize> = HashMap::new();
    let mut summary = Summary::default();
    while let Some((line, record)) = records.next()? {
        let parsed = match record {
            Record::Json(parsed) => parsed,
            Record::Cells(cells) => cells.and_then(|cells| csv_field(&headers, &cells)),
        };
        let checked = parsed.and_then(|v| match nul_path(&v, String::new()) {
            Some(path) => Err(Invalid::one(path, NUL_REJECTED)),
            None => field_line(&v),
        });
        let applied = match checked {
            Err(e) => Err(e),
            Ok(f) => {
                let at = match &f {
                    FieldLine::Profile { key, .. } => (false, key.as_str().to_owned()),
                    FieldLine::User { key, .. } => (true, (*key).to_owned()),
                };
                if let Some(first) = on_line.get(&at) {
                    let e = format!("`{}` is defined on line {first} already", at.1);
                    Err(Invalid::one("key", e))
                } else {
                    let applied = fields.apply(app, f).await?;
                    if applied.is_ok() {
                        on_line.insert(at, line);
                    }
                    applied
                }
            }
        };
        match applied {
            Ok(true) => summary.imported += 1,
            Ok(false) => summary.already += 1,
            Err(e) => {
                summary.skipped += 1;
                let mut held = Vec::new();
                report(&mut held, line, &e);
                emit(&mut held, errors);
            }
        }
    }
    Ok(summary)
}

/// The target's fields while a fields file is applied to it.
struct Fields {
    channel_id: i64,
    profile: HashMap<String, ProfileField>,
    /// The built-in user fields marked sensitive.
    sensitive_builtins: Vec<String>,
}

impl Fields {
    async fn load(app: &App, channel_id: i64) -> anyhow::Result<Self> {
        let profile = app
            .store
            .profile_fields(channel_id)
            .await?
            .into_iter()
            .map(|f| (f.key.as_str().to_owned(), f))
            .collect();
        let sensitive_builtins = app.store.sensitive_builtins(channel_id).await?;
        Ok(Self {
            channel_id,
            profile,
            sensitive_builtins,
        })
    }

    /// Applies one line: `Ok(Ok(true))` when it changed the store, `Ok(Ok(false))` when the
    /// store agreed already, `Ok(Err(_))` when the line cannot apply (a bad line).
    async fn apply(&mut self, app: &App, line: FieldLine) -> anyhow::Result<Result<bool, Invalid>> {
        let id = self.channel_id;
        let (key, field_type, name, sensitive) = match line {
            FieldLine::User { key, sensitive } => {
                let had = self.sensitive_builtins.iter().any(|k| k == key);
                return Ok(match sensitive.filter(|s| *s != had) {
                    None => Ok(false),
                    Some(s) => {
                        app.store.set_builtin_sensitive(id, key, s).await?;
                        self.sensitive_builtins.retain(|k| k != key);
                        if s {
                            self.sensitive_builtins.push(key.to_owned());
                        }
                        Ok(true)
                    }
                });
            }
            FieldLine::Profile {
                key,
                field_type,
                name,
                sensitive,
            } => (key, field_type, name, sensitive),
        };
        // Twice at most: a field the running server registered since the registry was
        // read (a user write naming it) is then found, and the line applies to it.
        for _ in 0..2 {
            let Some(had) = self.profile.get(key.as_str()) else {
                let field = ProfileField {
                    name: name.clone().unwrap_or_else(|| key.as_str().to_owned()),
                    key: key.clone(),
                    field_type,
                    sensitive: sensitive.unwrap_or(false),
                    builtin: false,
                    created_at: now_ms(),
                };
                match app.store.insert_profile_field(id, &field).await {
                    Ok(()) => {
                        self.profile.insert(key.as_str().to_owned(), field);
                        return Ok(Ok(true));
                    }
                    Err(sori_store::StoreError::Conflict(_)) => {
                        *self = Self::load(app, id).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if had.field_type != field_type {
                return Ok(Err(Invalid::one(
                    "type",
                    format!(
                        "`{key}` is registered here as {}, not {} (a field's type cannot \
                         change under stored values: delete the field first, or leave the \
                         line out)",
                        had.field_type.as_str(),
                        field_type.as_str(),
                        key = key.as_str(),
                    ),
                )));
            }
            let name = name.filter(|n| *n != had.name);
            let sensitive = sensitive.filter(|s| *s != had.sensitive);
            if name.is_none() && sensitive.is_none() {
                return Ok(Ok(false));
            }
            return Ok(
                match app
                    .store
                    .update_profile_field(id, key.as_str(), name.as_deref(), sensitive)
                    .await?
                {
                    Some(changed) => {
                        self.profile.insert(key.as_str().to_owned(), changed);
                        Ok(true)
                    }
                    None => Err(Invalid::one(
                        "key",
                        format!("`{}` was deleted while the file was read", key.as_str()),
                    )),
                },
            );
        }
        Ok(Err(Invalid::one(
            "key",
            format!(
                "`{}` is being registered and removed meanwhile",
                key.as_str()
            ),
        )))
    }
}

/// The records of an import file in order, each with its line number: NDJSON lines as
/// JSON, CSV records as cells. One reader for every kind of file, so a line is numbered,
/// and a broken one reported, the same way whatever the file holds.
enum Records<R: BufRead> {
    /// Lines as bytes: one line that is not UTF-8 (a stray Latin-1 export, say) is a bad
    /// line to report and skip, not the end of the import.
    Ndjson {
        reader: R,
        buf: Vec<u8>,
        next: usize,
    },
    Csv {
        rdr: csv::Reader<NoteScan<LfOnly<R>>>,
        scan: CsvScan,
        headers: Vec<String>,
        record: csv::StringRecord,
    },
}

/// One record of [`Records`].
enum Record {
    /// An NDJSON line, parsed.
    Json(Result<Value, Invalid>),
    /// A CSV record's cells (no more than the header row names, but for empty ones).
    Cells(Result<Vec<String>, Invalid>),
}

impl<R: BufRead> Records<R> {
    /// Starts reading; a CSV file's header row is read and checked here (`users`: for a
    /// user file, see `check_csv_header`; a header row whose quote is never closed ends the
    /// import: the whole file went into one cell).
    fn open(reader: R, format: Format, users: bool) -> anyhow::Result<Self> {
        Ok(match format {
            Format::Ndjson => Self::Ndjson {
                reader,
                buf: Vec::new(),
                next: 0,
            },
            Format::Csv => {
                let scan = CsvScan::default();
                let mut rdr = csv::ReaderBuilder::new()
                    .flexible(true)
                    .from_reader(scan.wrap(LfOnly(reader)));
                let headers: Vec<String> = rdr
                    .headers()
                    .context("reading the CSV header row")?
                    .iter()
                    .map(str::to_owned)
                    .collect();
                if let Some(quote) = scan.unclosed_quote() {
                    anyhow::bail!(
                        "malformed CSV: the quote that opens a cell of the header row on line \
                         {quote} is never closed, so the whole file was read into that cell"
                    );
                }
                check_csv_header(&headers, users).map_err(anyhow::Error::msg)?;
                Self::Csv {
                    rdr,
                    scan,
                    headers,
                    record: csv::StringRecord::new(),
                }
            }
        })
    }

    /// The CSV header row (none for NDJSON).
    fn headers(&self) -> &[String] {
        match self {
            Self::Ndjson { .. } => &[],
            Self::Csv { headers, .. } => headers,
        }
    }

    /// The next record; blank NDJSON lines and empty CSV lines are passed over.
    fn next(&mut self) -> anyhow::Result<Option<(usize, Record)>> {
        match self {
            Self::Ndjson { reader, buf, next } => loop {
                let i = *next;
                *next += 1;
                let Some(whole) =
                    next_line(reader, buf).with_context(|| format!("reading line {}", i + 1))?
                else {
                    return Ok(None);
                };
                if !whole {
                    let long = Invalid::one(
                        WHOLE_LINE,
                        format!(
                            "is longer than {} MiB, the most a line may hold",
                            MAX_LINE >> 20
                        ),
                    );
                    return Ok(Some((i + 1, Record::Json(Err(long)))));
                }
                let line = buf.strip_suffix(b"\r").unwrap_or(buf);
                // A byte-order mark, as Windows editors save UTF-8 (the CSV reader drops
                // it itself).
                let line = match i {
                    0 => line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line),
                    _ => line,
                };
                let parsed = match std::str::from_utf8(line) {
                    Ok(text) if text.trim().is_empty() => continue,
                    // As an API body: a lone surrogate escape reads as U+FFFD.
                    Ok(text) => sori_domain::value::json_text(text.as_bytes())
                        .map_err(|e| Invalid::one(WHOLE_LINE, format!("malformed JSON: {e}"))),
                    Err(e) => Err(Invalid::one(WHOLE_LINE, format!("is not UTF-8 text: {e}"))),
                };
                return Ok(Some((i + 1, Record::Json(parsed))));
            },
            Self::Csv {
                rdr,
                scan,
                headers,
                record,
            } => {
                // Line numbers from the parser: a quoted cell may span lines.
                let next = rdr.position().line() as usize;
                Ok(match rdr.read_record(record) {
                    Ok(false) => None,
                    Ok(true) => {
                        let line = scan.skip(record.position().map_or(next, |p| p.line() as usize));
                        let cells = match scan.unclosed_quote() {
                            Some(quote) => Err(Invalid::one(
                                WHOLE_LINE,
                                format!(
                                    "malformed CSV: the quote that opens a cell on line \
                                     {quote} is never closed, so every line after it was \
                                     read into that cell"
                                ),
                            )),
                            None => {
                                // The `'` an export put before a formula dropped, then
                                // trimmed (spreadsheets leave stray spaces).
                                let cells: Vec<String> = record
                                    .iter()
                                    .map(|c| from_sheet_safe(c).trim().to_owned())
                                    .collect();
                                check_csv_width(headers, &cells).map(|()| cells)
                            }
                        };
                        Some((line, Record::Cells(cells)))
                    }
                    Err(e) => {
                        let line = scan.skip(e.position().map_or(next, |p| p.line() as usize));
                        let bad = Invalid::one(WHOLE_LINE, csv_problem(&e));
                        Some((line, Record::Cells(Err(bad))))
                    }
                })
            }
        }
    }
}

/// What the CSV parser does not say about the bytes it reads: where the empty lines are,
/// and whether the file ended inside a quoted cell.
///
/// The parser skips empty lines but counts a record as starting where it began looking, so
/// a record after empty lines would be reported on the first of them; `skip` moves such a
/// line number past them. (Only lines from a record's reported start on are looked at, and
/// the lines between two records can only be empty ones, so an empty line inside a quoted
/// cell never matters.)
///
/// A quote that is never closed makes the parser read the rest of the file into one cell
/// and call it the last record; `unclosed_quote` names the line of that quote once the end
/// of the file is reached, so the record is reported instead of stored or lost quietly.
#[derive(Clone, Default)]
struct CsvScan(std::sync::Arc<std::sync::Mutex<Scanned>>);

/// See [`CsvScan`].
#[derive(Default)]
struct Scanned {
    /// Empty lines, in order.
    blank: Vec<usize>,
    /// The quoting state of the parser (RFC 4180 as the `csv` crate reads it).
    quote: Quote,
    /// The line of the quote that opened the cell being read, while it is open.
    opened_on: usize,
    /// The end of the file has been read.
    eof: bool,
}

/// Where a byte falls, as far as quotes go.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// At the start of a cell: a quote here opens a quoted cell.
    #[default]
    CellStart,
    /// In a cell that did not start with a quote: quotes are plain characters.
    Plain,
    /// Inside a quoted cell.
    Open,
    /// Just after a quote inside a quoted cell: another quote is an escaped one, anything
    /// else means the quote closed the cell.
    MaybeClosed,
}

impl CsvScan {
    /// A reader passing `inner` through while noting what it reads.
    fn wrap<R: Read>(&self, inner: R) -> NoteScan<R> {
        NoteScan {
            inner,
            scan: self.clone(),
            line: 1,
            at_start: true,
            at_file_start: true,
        }
    }

    /// The first line from `line` on that is not empty.
    fn skip(&self, mut line: usize) -> usize {
        let Ok(scan) = self.0.lock() else {
            return line;
        };
        while scan.blank.binary_search(&line).is_ok() {
            line += 1;
        }
        line
    }

    /// The line of a quote still open at the end of the file (asked once a record has
    /// been read: only the last record can end there).
    fn unclosed_quote(&self) -> Option<usize> {
        let scan = self.0.lock().ok()?;
        (scan.eof && scan.quote == Quote::Open).then_some(scan.opened_on)
    }
}

/// See [`CsvScan::wrap`].
struct NoteScan<R> {
    inner: R,
    scan: CsvScan,
    /// The line the next byte belongs to (1-based, as the parser counts).
    line: usize,
    /// Nothing of `line` has been read yet.
    at_start: bool,
    /// Nothing of the file has been read yet (a byte-order mark there is not a cell's).
    at_file_start: bool,
}

impl<R: Read> Read for NoteScan<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut scan = self
            .scan
            .0
            .lock()
            .map_err(|_| std::io::Error::other("CSV scan poisoned"))?;
        if n == 0 && !buf.is_empty() {
            scan.eof = true;
        }
        // The parser drops a byte-order mark before the header row, so the first cell
        // starts after it (one split over two reads is not looked for: reads are buffered).
        let mut bytes = &buf[..n];
        if n > 0 && std::mem::take(&mut self.at_file_start) {
            bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        }
        for &b in bytes {
            let ends_cell = matches!(b, b',' | b'\n' | b'\r');
            scan.quote = match (scan.quote, b) {
                (Quote::CellStart, b'"') => {
                    scan.opened_on = self.line;
                    Quote::Open
                }
                (Quote::Open, b'"') => Quote::MaybeClosed,
                (Quote::Open, _) | (Quote::MaybeClosed, b'"') => Quote::Open,
                (_, _) if ends_cell => Quote::CellStart,
                _ => Quote::Plain,
            };
            if b == b'\n' {
                if self.at_start {
                    scan.blank.push(self.line);
                }
                self.line += 1;
                self.at_start = true;
            } else {
                self.at_start = false;
            }
        }
        Ok(n)
    }
}

/// A CSV reader's error in the report's words. The reader's own text gives its position
/// again, in lines that do not count blank ones, next to the report's line number.
fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!(
            "malformed CSV: cell {} is not UTF-8 text (a file saved in another encoding, \
             such as EUC-KR, must be converted to UTF-8)",
            err.field() + 1
        ),
        _ => format!("malformed CSV: {e}"),
    }
}

/// A stored time as an export writes it: epoch milliseconds, except a time before
/// 1973-03-03, which import refuses as a number (it reads as seconds sent as
/// milliseconds, see `SECONDS_BELOW`) and takes as ISO-8601 text: an export stays an
/// import file.
fn export_time(ms: i64) -> Value {
    if ms < sori_domain::segment::SECONDS_BELOW
        && let Ok(t) = jiff::Timestamp::from_millisecond(ms)
    {
        return Value::String(t.to_string());
    }
    Value::from(ms)
}

/// [`export_time`] as a CSV cell.
fn cell_time(ms: i64) -> String {
    match export_time(ms) {
        Value::String(s) => s,
        v => v.to_string(),
    }
}

/// The longest NDJSON line read, as large as the largest API body: a valid user or event
/// line is far smaller, so a longer one (a file that is not NDJSON, one huge value) is
/// reported and skipped without being held in memory.
const MAX_LINE: usize = 1 << 20;

/// Reads the next line, without its `\n`, into `buf`: `Ok(None)` at the end of the file,
/// `Ok(Some(false))` for a line longer than [`MAX_LINE`], whose bytes are passed over and
/// not kept (`buf` is then empty).
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let (mut read, mut long) = (false, false);
    loop {
        let chunk = match r.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(read.then_some(!long));
        }
        read = true;
        let end = chunk.iter().position(|&b| b == b'\n');
        let part = end.unwrap_or(chunk.len());
        if !long && buf.len() + part > MAX_LINE {
            long = true;
            buf.clear();
        }
        if !long {
            buf.extend_from_slice(&chunk[..part]);
        }
        r.consume(part + usize::from(end.is_some()));
        if end.is_some() {
            return Ok(Some(!long));
        }
    }
}

/// Turns CRLF and lone CR line ends into LF. The CSV parser counts lines on `\n` but ends
/// a record at a `\r` too, so in a CRLF file (Excel on Windows) a record's start position
/// would name the line before it, and in a CR file (old Mac exports) every record would be
/// on line 1.
struct LfOnly<R>(R);

impl<R: BufRead> Read for LfOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let chunk = self.0.fill_buf()?;
        let (mut r, mut w) = (0, 0);
        // A `\r` that ends the buffered bytes, with nothing copied before it.
        let mut lone_cr = false;
        while r < chunk.len() && w < buf.len() {
            if chunk[r] == b'\r' {
                match chunk.get(r + 1) {
                    Some(b'\n') => {
                        r += 1;
                        continue;
                    }
                    // Whether it ends a line depends on the next byte: leave it for later.
                    None => {
                        lone_cr = w == 0;
                        break;
                    }
                    Some(_) => {
                        buf[w] = b'\n';
                        w += 1;
                        r += 1;
                        continue;
                    }
                }
            }
            buf[w] = chunk[r];
            w += 1;
            r += 1;
        }
        if !lone_cr {
            self.0.consume(r);
            return Ok(w);
        }
        self.0.consume(1);
        if self.0.fill_buf()?.first() == Some(&b'\n') {
            return self.read(buf);
        }
        buf[0] = b'\n';
        Ok(1)
    }
}

fn report(held: &mut Vec<(usize, String)>, line: usize, e: &Invalid) {
    for f in &e.0 {
        // An error of the whole line (malformed JSON or CSV, not UTF-8) names no field.
        held.push(match f.field.as_str() {
            WHOLE_LINE => (line, format!("line {line}: {}", escape_unseen(&f.message))),
            field => (
                line,
                format!(
                    "line {line}: {}: {}",
                    escape_unseen(field),
                    escape_unseen(&f.message)
                ),
            ),
        });
    }
}

/// Writes the held reports in line order (a line's own reports keep their order).
fn emit(held: &mut Vec<(usize, String)>, errors: &mut dyn Write) {
    held.sort_by_key(|(line, _)| *line);
    for (_, message) in held.drain(..) {
        say(errors, &message);
    }
}

/// Writes one whole line at once, so [`AboveBar`] lifts the bar once per line.
fn say(errors: &mut dyn Write, line: &str) {
    let _ = errors.write_all(format!("{line}\n").as_bytes());
}

/// The error output while a progress bar is drawn on the same terminal: each write goes
/// out with the bar lifted, so the bar's next redraw cannot wipe a reported line.
struct AboveBar<'a> {
    bar: &'a indicatif::ProgressBar,
    out: &'a mut dyn Write,
}

impl Write for AboveBar<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let out = &mut self.out;
        self.bar.suspend(|| out.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes the pending lines, then reports the chunk's bad lines, parse and write errors
/// together, in line order.
async fn flush(
    app: &App,
    ch: &ChannelInfo,
    pending: &mut Vec<Pending>,
    summary: &mut Summary,
    held: &mut Vec<(usize, String)>,
    errors: &mut dyn Write,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        emit(held, errors);
        return Ok(());
    }
    let batch: Vec<Pending> = std::mem::take(pending);
    let lines: Vec<usize> = batch.iter().map(|p| p.line).collect();
    let results = app
        .ingest_many(
            ch,
            batch.into_iter().map(|p| p.ingest).collect(),
            Source::Import,
        )
        .await?;
    for (line, r) in lines.into_iter().zip(results) {
        match r {
            Ok(o) if o.duplicate_events > 0 => summary.already += 1,
            Ok(_) => summary.imported += 1,
            Err(sori_app::AppError::Invalid(e)) => {
                summary.skipped += 1;
                report(held, line, &e);
            }
            Err(e @ (sori_app::AppError::Store(_) | sori_app::AppError::Unavailable)) => {
                emit(held, errors);
                return Err(anyhow::anyhow!("line {line}: {e}"));
            }
            Err(e) => {
                summary.skipped += 1;
                held.push((line, format!("line {line}: {e}")));
            }
        }
    }
    emit(held, errors);
    Ok(())
}

fn user_ingest(v: &Value) -> Result<Ingest, Invalid> {
    let l = user_line(v, now_ms())?;
    Ok(Ingest {
        target: UserTarget::MemberId {
            member_id: l.member_id,
            new_id: new_id(),
        },
        update: l.update,
        activity: Activity {
            created_at: l.created_at,
            last_seen_at: l.last_seen_at,
            ..Activity::default()
        },
        events: Vec::new(),
        message_id: None,
    })
}

/// An event line as an ingest. Its `messageId` is a hash of the event the line describes
/// plus how often that event appeared before in this file, so a re-run stores nothing
/// twice while two identical lines of one file stay two events. The hash is of the event
/// as checked (owner, name, properties without nulls, page, time in milliseconds), not
/// of the line's text: the same export written as NDJSON and as CSV, or one instant
/// written with two offsets, is the same event.
fn event_ingest(
    v: &Value,
    seen: &mut HashMap<String, u32>,
    retention: sori_domain::event::Retention<'_>,
) -> Result<Ingest, Invalid> {
    let l = event_line(v)?;
    let at = l.created_at.unwrap_or_else(now_ms).min(now_ms());
    let mut event = Invalid::both(
        retention.check("createdAt", at),
        l.input.check("", new_id(), at, EventSource::Import, None),
    )?;
    let owner = match &l.owner {
        Owner::Member(m) => ("memberId", m),
        Owner::User(u) => ("userId", u),
    };
    let canonical = serde_json::json!([
        owner.0,
        owner.1,
        event.name,
        event.property_json,
        event.page,
        l.created_at
    ]);
    let digest = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
    let n = seen.entry(digest.clone()).or_insert(0);
    event.message_id = Some(format!("import:{}:{n}", &digest[..40]));
    *n += 1;
    let target = match l.owner {
        Owner::Member(m) => UserTarget::MemberId {
            member_id: m,
            new_id: new_id(),
        },
        Owner::User(u) => UserTarget::Id(u),
    };
    Ok(Ingest {
        target,
        update: sori_domain::UserUpdate::default(),
        activity: Activity::seen(at),
        events: vec![event],
        message_id: None,
    })
}

/// Writes every user or event of the channel to `out`.
pub async fn export(
    app: &App,
    ch: &ChannelInfo,
    kind: Kind,
    format: Format,
    segment: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    const PAGE: u32 = 500;
    let id = ch.channel.id;
    let mut n = 0;
    match kind {
        Kind::Users => {
            let keys: Vec<String> = app
                .store
                .profile_fields(id)
                .await?
                .into_iter()
                .map(|f| f.key.as_str().to_owned())
                .collect();
            // A segment's users, in id order like a whole export; resolved before anything is
            // written, so a bad segment leaves no half-written output.
            let members = match segment {
                Some(sid) => {
                    let q = app
                        .target(ch, None, Some(sid))
                        .await
                        .map_err(|e| anyhow::anyhow!("segment {sid}: {e}"))?;
                    Some(
                        app.matching_ids(ch, &q, sori_app::Engine::Memory)
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                    )
                }
                None => None,
            };
            let csv = format == Format::Csv;
            if csv {
                let header: Vec<String> = USER_LINE_COLUMNS
                    .iter()
                    .map(|&c| c.to_owned())
                    .chain(keys.iter().map(|k| profile_field_column(k).into_owned()))
                    .collect();
                out.write_all(&csv_line(&header)?)?;
            }
            // Pages of a segment's ids, or pages of the whole channel by id cursor.
            let mut chunks = members.as_deref().map(|ids| ids.chunks(PAGE as usize));
            let mut after: Option<String> = None;
            loop {
                let users = match chunks.as_mut() {
                    Some(it) => {
                        let Some(ids) = it.next() else { break };
                        let mut us = app.store.users_by_ids(id, ids).await?;
                        us.sort_by(|a, b| a.id.cmp(&b.id));
                        us
                    }
                    None => {
                        app.store
                            .users_page(id, after.as_deref(), PAGE, false)
                            .await?
                    }
                };
                for u in &users {
                    n += 1;
                    match csv {
                        false => {
                            // The shape of an import line; empty profile and tags are
                            // left out because an import refuses them.
                            let mut v = serde_json::json!({
                                "id": u.id, "memberId": u.member_id,
                                "unsubscribeEmail": u.unsubscribe_email,
                                "unsubscribeTexting": u.unsubscribe_texting, "blocked": u.blocked,
                                "createdAt": export_time(u.created_at),
                                "lastSeenAt": u.last_seen_at.map(export_time),
                            });
                            if !u.profile.is_empty() {
                                v["profile"] = Value::Object(u.profile.clone());
                            }
                            if !u.tags.is_empty() {
                                v["tags"] = serde_json::json!(u.tags);
                            }
                            writeln!(out, "{v}")?;
                        }
                        true => {
                            let mut row = vec![
                                u.id.clone(),
                                u.member_id.clone().unwrap_or_default(),
                                cell_time(u.created_at),
                                u.last_seen_at.map(cell_time).unwrap_or_default(),
                                csv_list_cell(u.tags.iter().map(String::as_str)),
                                u.unsubscribe_email.to_string(),
                                u.unsubscribe_texting.to_string(),
                                u.blocked.to_string(),
                            ];
                            row.extend(keys.iter().map(|k| cell(u.profile.get(k))));
                            out.write_all(&csv_row(&row)?)?;
                        }
                    }
                }
                if chunks.is_none() {
                    match users.last() {
                        Some(u) if users.len() == PAGE as usize => after = Some(u.id.clone()),
                        _ => break,
                    }
                }
            }
        }
        Kind::Fields => {
            let csv = format == Format::Csv;
            if csv {
                out.write_all(&csv_line(FIELD_LINE_COLUMNS)?)?;
            }
            // Profile fields, then the built-in user fields' masking (the one thing of
            // theirs a store sets).
            let sensitive = app.store.sensitive_builtins(id).await?;
            let profile = app.store.profile_fields(id).await?;
            let user = BUILTIN_FIELDS
                .iter()
                .filter(|(key, _)| builtin_unmaskable(key).is_none())
                .map(|(key, ty)| {
                    let flag = sensitive.iter().any(|s| s == key);
                    ("user", *key, None, *ty, flag, true)
                });
            let rows = profile
                .iter()
                .map(|f| {
                    let (key, name) = (f.key.as_str(), Some(f.name.as_str()));
                    ("profile", key, name, f.field_type, f.sensitive, f.builtin)
                })
                .chain(user);
            for (scope, key, name, ty, sensitive, builtin) in rows {
                n += 1;
                match csv {
                    false => {
                        let mut v = serde_json::json!({
                            "scope": scope, "key": key, "type": ty.as_str(),
                            "sensitive": sensitive, "builtin": builtin,
                        });
                        if let Some(name) = name {
                            v["name"] = Value::from(name);
                        }
                        writeln!(out, "{v}")?;
                    }
                    true => {
                        let row = [scope, key, name.unwrap_or(""), ty.as_str()]
                            .map(str::to_owned)
                            .into_iter()
                            .chain([sensitive.to_string(), builtin.to_string()])
                            .collect::<Vec<_>>();
                        out.write_all(&csv_row(&row)?)?;
                    }
                }
            }
        }
        Kind::Events => {
            let csv = format == Format::Csv;
            if csv {
                let header = [
                    "id",
                    "memberId",
                    "userId",
                    "name",
                    "createdAt",
                    "page",
                    "source",
                    "property",
                ];
                out.write_all(&csv_line(header)?)?;
            }
            let mut after: Option<(i64, String)> = None;
            loop {
                let events = app
                    .store
                    .events_page(id, after.as_ref().map(|(t, i)| (*t, i.as_str())), PAGE)
                    .await?;
                // A member's events name the member, so the file imports into another
                // store (where user ids mean nothing) after the users.
                let mut owners: Vec<String> = events.iter().map(|e| e.user_id.clone()).collect();
                owners.sort_unstable();
                owners.dedup();
                let members: HashMap<String, String> = app
                    .store
                    .users_by_ids(id, &owners)
                    .await?
                    .into_iter()
                    .filter_map(|u| Some((u.id, u.member_id?)))
                    .collect();
                for e in &events {
                    n += 1;
                    let property = Value::Object(e.property.clone());
                    let member = members.get(&e.user_id);
                    match csv {
                        false => {
                            let mut v = serde_json::json!({
                                "id": e.id, "name": e.name, "property": property,
                                "page": e.page, "createdAt": export_time(e.created_at),
                                "source": e.source.as_str(),
                            });
                            v[if member.is_some() {
                                "memberId"
                            } else {
                                "userId"
                            }] = Value::String(member.unwrap_or(&e.user_id).clone());
                            writeln!(out, "{v}")?;
                        }
                        true => {
                            let row = [
                                e.id.clone(),
                                member.cloned().unwrap_or_default(),
                                if member.is_some() {
                                    String::new()
                                } else {
                                    e.user_id.clone()
                                },
                                e.name.clone(),
                                cell_time(e.created_at),
                                e.page.clone().unwrap_or_default(),
                                e.source.as_str().to_owned(),
                                property.to_string(),
                            ];
                            out.write_all(&csv_row(&row)?)?;
                        }
                    }
                }
                match events.last() {
                    Some(e) if events.len() == PAGE as usize => {
                        after = Some((e.created_at, e.id.clone()));
                    }
                    _ => break,
                }
            }
        }
    }
    out.flush()?;
    Ok(n)
}

/// One CSV record, quoted as needed.
fn csv_line<T: AsRef<[u8]>>(fields: impl IntoIterator<Item = T>) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(fields)?;
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

/// One CSV data record: every cell [`sheet_safe`], so that a value a customer planted
/// cannot run as a formula in the spreadsheet the file is opened in, and the import reads
/// it back as it was.
fn csv_row(cells: &[String]) -> anyhow::Result<Vec<u8>> {
    let safe: Vec<Cow<'_, str>> = cells.iter().map(|c| sheet_safe(c)).collect();
    csv_line(safe.iter().map(|c| c.as_bytes()))
}

fn cell(v: Option<&Value>) -> String {
    v.map(csv_text).unwrap_or_default()
}

/// The file `sori export --output` writes. A regular file (or a new one) is written beside
/// the target under a name of its own and renamed over it when complete: a failed or
/// interrupted export leaves neither a file that looks like a short export nor a damaged
/// earlier one, and two exports to one path do not write into each other. A symbolic link
/// keeps pointing where it did (the file it names is replaced). Anything else
/// (`/dev/null`, a FIFO, a terminal) is written to directly: replacing it with a regular
/// file would break it for everyone.
pub struct ExportFile {
    out: std::io::BufWriter<std::fs::File>,
    /// `(partial, target)` when written beside the target.
    rename: Option<(std::path::PathBuf, std::path::PathBuf)>,
    shown: std::path::PathBuf,
}

impl ExportFile {
    /// Opens the output for `path` (see the type).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).ok();
        if meta.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            anyhow::bail!("--output {} is a directory", path.display());
        }
        if meta.as_ref().is_some_and(|m| !m.is_file()) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            return Ok(Self {
                out: std::io::BufWriter::new(file),
                rename: None,
                shown: path.to_path_buf(),
            });
        }
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        let target = match (meta, link) {
            (Some(_), _) => std::fs::canonicalize(path)?,
            // A link to nothing (or a loop): writing would replace the link itself.
            (None, true) => anyhow::bail!(
                "--output {} is a symbolic link to a file that does not exist",
                path.display()
            ),
            (None, false) => path.to_path_buf(),
        };
        let mut partial = target.clone().into_os_string();
        partial.push(format!(".{}.partial", sori_app::secrets::random_hex(6)));
        let partial = std::path::PathBuf::from(partial);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .with_context(|| format!("creating a file beside {}", target.display()))?;
        Ok(Self {
            out: std::io::BufWriter::new(file),
            rename: Some((partial, target)),
            shown: path.to_path_buf(),
        })
    }

    /// Where the export writes.
    pub fn writer(&mut self) -> &mut dyn Write {
        &mut self.out
    }

    /// Completes the export: flushed and on disk before it takes the target's name, so a
    /// full disk fails the export instead of leaving a short file under the name.
    pub fn finish(self) -> anyhow::Result<()> {
        let ExportFile { out, rename, shown } = self;
        let flushed = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)
            .and_then(|f| match &rename {
                Some(_) => f.sync_all(),
                None => Ok(()),
            });
        match (flushed, rename) {
            (Ok(()), Some((partial, target))) => std::fs::rename(&partial, &target)
                .with_context(|| format!("renaming the export to {}", target.display())),
            (Ok(()), None) => Ok(()),
            (Err(e), rename) => {
                if let Some((partial, _)) = rename {
                    let _ = std::fs::remove_file(partial);
                }
                Err(anyhow::Error::new(e).context(format!("writing {}", shown.display())))
            }
        }
    }

    /// Gives the export up: a file written beside the target is removed.
    pub fn abandon(self) {
        let ExportFile { out, rename, .. } = self;
        drop(out);
        if let Some((partial, _)) = rename {
            let _ = std::fs::remove_file(partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};

    use super::LfOnly;

    /// Hands out at most `step` bytes per read, to put chunk ends everywhere.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn empty_lines_are_skipped_when_naming_a_line() {
        let blank = super::CsvScan::default();
        let input = b"h\n\n\n,x\n\"a\n\nb\"\ny";
        let mut r = blank.wrap(&input[..]);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut out).unwrap();
        assert_eq!(out, input, "passed through");
        assert_eq!(blank.skip(1), 1);
        assert_eq!(blank.skip(2), 4);
        assert_eq!(blank.skip(4), 4);
        // Inside the quoted cell (lines 5–7) only the cell's own start is ever asked for.
        assert_eq!(blank.skip(5), 5);
        assert_eq!(blank.skip(8), 8);
    }

    #[test]
    fn quotes_are_followed_as_the_parser_reads_them() {
        let unclosed = |input: &[u8]| {
            let scan = super::CsvScan::default();
            let mut r = scan.wrap(input);
            std::io::Read::read_to_end(&mut r, &mut Vec::new()).unwrap();
            scan.unclosed_quote()
        };
        assert_eq!(unclosed(b"a,b\n1,\"x\ny\"\n2,\"\"\"q\"\"\""), None);
        assert_eq!(
            unclosed(b"a,b\n1,5'11\"\n2,x\"y\n"),
            None,
            "quotes inside a cell"
        );
        assert_eq!(
            unclosed(b"\xef\xbb\xbf\"a,\",b\nx"),
            None,
            "after a byte-order mark"
        );
        assert_eq!(unclosed(b"a,b\n1,x\n2,\"y\n3,z\n"), Some(3));
        assert_eq!(
            unclosed(b"a,b\n1,x\r\"y\n"),
            Some(2),
            "a CR ends a record too"
        );
        assert_eq!(unclosed(b"a,\"b\n1,2\n"), Some(1));
    }

    #[test]
    fn crlf_and_cr_become_lf_across_every_chunk_boundary() {
        let inputs: [&[u8]; 6] = [
            b"a,b\r\nc,d\r\n",
            b"\r\r\n\r",
            b"x\ry\r\n\r\n\n\rz",
            b"\"q\r\nr\",1\r\n",
            b"\r",
            b"",
        ];
        for input in inputs {
            let want = String::from_utf8_lossy(input)
                .replace("\r\n", "\n")
                .replace('\r', "\n");
            for step in 1..=5 {
                for size in 1..=4 {
                    let mut r = LfOnly(BufReader::with_capacity(step, Trickle(input, step)));
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; size];
                    loop {
                        let n = r.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                    }
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        want,
                        "step {step} size {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn lines_past_the_limit_are_passed_over_across_every_chunk_boundary() {
        let long = vec![b'x'; super::MAX_LINE + 1];
        let fits = vec![b'y'; super::MAX_LINE];
        let mut input = b"a\n\n".to_vec();
        input.extend_from_slice(&long);
        input.push(b'\n');
        input.extend_from_slice(&fits);
        input.extend_from_slice(b"\nlast");
        for step in [1, 7, 4096, 1 << 16] {
            let mut r = BufReader::with_capacity(step, Trickle(&input, step));
            let mut buf = Vec::new();
            let mut got = Vec::new();
            while let Some(whole) = super::next_line(&mut r, &mut buf).unwrap() {
                got.push((whole, buf.len(), buf.first().copied()));
                assert!(buf.capacity() <= 2 * super::MAX_LINE + step, "step {step}");
            }
            assert_eq!(
                got,
                [
                    (true, 1, Some(b'a')),
                    (true, 0, None),
                    (false, 0, None),
                    (true, super::MAX_LINE, Some(b'y')),
                    (true, 4, Some(b'l')),
                ],
                "step {step}"
            );
        }
    }
}
