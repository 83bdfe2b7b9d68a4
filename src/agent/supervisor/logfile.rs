//! A replica's server log (`state_dir/replicas/<id>/server.log`).
//!
//! The child writes straight to the file (stdout and stderr, opened O_APPEND),
//! not through a pipe read by the agent: a pipe would break the moment the agent
//! restarts and the server would die of SIGPIPE or block on a full pipe. The
//! agent caps the size by copy-truncate: it copies the file to `server.log.1`
//! (shifting older ones up) and truncates the original, which the child keeps
//! appending to from offset 0 thanks to O_APPEND. Lines the child writes between
//! the copy and the truncate are lost; that window is a few milliseconds per
//! rotation, and is the price of logs that survive an agent restart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::domain::{LogQuery, LogSlice};

pub const LOG_FILE: &str = "server.log";

/// At most this much of the log goes into one follow reply; the rest comes
/// with the next.
const FOLLOW_MAX_BYTES: u64 = 1 << 20;

/// Opens (creating) the log a child will write to.
pub fn open_for_child(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(dir.join(LOG_FILE))
}

/// Appends one agent line to the log, so `replica logs` shows why the agent
/// started, restarted or stopped the server next to what the server said.
pub fn note(dir: &Path, line: &str) {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let result = open_for_child(dir)
        .and_then(|mut f| f.write_all(format!("[{stamp} gpufleet-agent] {line}\n").as_bytes()));
    if let Err(e) = result {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot append to replica log");
    }
}

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{LOG_FILE}.{n}"))
}

/// Rotates the log when it has grown past `max_bytes`, keeping `files` files in
/// all (the live one included). Returns whether it rotated.
pub fn rotate_if_needed(dir: &Path, max_bytes: u64, files: u32) -> io::Result<bool> {
    let live = dir.join(LOG_FILE);
    let size = match fs::metadata(&live) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_bytes {
        return Ok(false);
    }
    let keep = files.max(1) - 1;
    if keep > 0 {
        for n in (1..keep).rev() {
            let from = rotated(dir, n);
            if from.exists() {
                fs::rename(&from, rotated(dir, n + 1))?;
            }
        }
        fs::copy(&live, rotated(dir, 1))?;
    }
    OpenOptions::new().write(true).open(&live)?.set_len(0)?;
    Ok(true)
}

/// The asked part of the log. Both kinds return complete lines only and the
/// offset in the live file just past the last of them, where the next
/// `LogQuery::Since` starts: a line still being written comes once, whole.
pub fn read(dir: &Path, query: LogQuery) -> io::Result<LogSlice> {
    let live = dir.join(LOG_FILE);
    match query {
        LogQuery::Tail(n) => {
            let end = complete_end(&live, 0, fs::metadata(&live)?.len())?;
            Ok(LogSlice {
                lines: tail_until(dir, n as usize, end)?,
                offset: end,
            })
        }
        LogQuery::Since(offset) => {
            let len = fs::metadata(&live)?.len();
            let mut lines = Vec::new();
            let mut from = offset;
            if len < offset {
                // Rotated (copy-truncate) since: the rest of what we had
                // not read is at the end of the newest rotated copy.
                let copy = rotated(dir, 1);
                if let Ok(m) = fs::metadata(&copy) {
                    if m.len() > offset {
                        let end = m.len().min(offset + FOLLOW_MAX_BYTES);
                        lines = read_lines(&copy, offset, end)?;
                    }
                }
                from = 0;
            }
            let cap = from + FOLLOW_MAX_BYTES;
            let end = complete_end(&live, from, len.min(cap))?;
            let end = if end == from && len > cap { cap } else { end };
            lines.extend(read_lines(&live, from, end)?);
            Ok(LogSlice { lines, offset: end })
        }
    }
}

/// Just past the last newline in `path`'s bytes [from, end), or `from`
/// when there is none.
fn complete_end(path: &Path, from: u64, end: u64) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut pos = end;
    const CHUNK: u64 = 64 * 1024;
    while pos > from {
        let step = CHUNK.min(pos - from);
        file.seek(SeekFrom::Start(pos - step))?;
        let mut chunk = vec![0u8; step as usize];
        file.read_exact(&mut chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(pos - step + i as u64 + 1);
        }
        pos -= step;
    }
    Ok(from)
}

/// The lines in `path`'s bytes [from, end).
fn read_lines(path: &Path, from: u64, end: u64) -> io::Result<Vec<String>> {
    if end <= from {
        return Ok(Vec::new());
    }
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; (end - from) as usize];
    let n = file.read(&mut buf)?;
    buf.truncate(n);
    Ok(String::from_utf8_lossy(&buf)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The last `lines` lines of the log, oldest first, reaching into rotated files
/// when the live one is shorter.
#[cfg(test)]
pub fn tail(dir: &Path, lines: usize) -> io::Result<Vec<String>> {
    let live = fs::metadata(dir.join(LOG_FILE))?.len();
    tail_until(dir, lines, live)
}

/// `tail`, reading the live file only up to `live_end`.
fn tail_until(dir: &Path, lines: usize, live_end: u64) -> io::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let live = dir.join(LOG_FILE);
    let mut sources = vec![live];
    for n in 1.. {
        let path = rotated(dir, n);
        if !path.exists() {
            break;
        }
        sources.push(path);
    }
    for (i, path) in sources.iter().enumerate() {
        if out.len() >= lines {
            break;
        }
        let end = (i == 0).then_some(live_end);
        let mut older = match tail_of_file(path, lines - out.len(), end) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound && i > 0 => break,
            Err(e) => return Err(e),
        };
        older.append(&mut out);
        out = older;
    }
    Ok(out)
}

/// Reads backwards in chunks until `lines` complete lines are found, so a
/// 10 MiB log costs a few reads, not a full scan.
fn tail_of_file(path: &Path, lines: usize, end: Option<u64>) -> io::Result<Vec<String>> {
    const CHUNK: u64 = 64 * 1024;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let len = end.map_or(len, |e| e.min(len));
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    while start > 0 {
        let step = CHUNK.min(start);
        start -= step;
        file.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0u8; step as usize];
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        // One more newline than lines wanted: the first line may be partial.
        if buf.iter().filter(|b| **b == b'\n').count() > lines {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    Ok(all[skip..].iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_lines(dir: &Path, from: usize, to: usize) {
        let mut f = open_for_child(dir).unwrap();
        for i in from..to {
            writeln!(f, "line {i}").unwrap();
        }
    }

    #[test]
    fn tail_returns_the_last_lines_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        write_lines(tmp.path(), 0, 20_000);
        let t = tail(tmp.path(), 3).unwrap();
        assert_eq!(t, vec!["line 19997", "line 19998", "line 19999"]);
        assert_eq!(tail(tmp.path(), 100_000).unwrap().len(), 20_000);
    }

    #[test]
    fn rotation_caps_size_and_keeps_the_writer_working() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // The child's descriptor stays open across rotations, as a server's would.
        let mut child = open_for_child(dir).unwrap();
        for round in 0..4 {
            for i in 0..100 {
                writeln!(child, "round {round} line {i}").unwrap();
            }
            assert!(rotate_if_needed(dir, 500, 3).unwrap());
        }
        writeln!(child, "after rotation").unwrap();
        assert!(!rotate_if_needed(dir, 500, 3).unwrap());

        let live = fs::read_to_string(dir.join(LOG_FILE)).unwrap();
        assert_eq!(live, "after rotation\n", "O_APPEND writes restart at 0");
        assert!(fs::read_to_string(rotated(dir, 1))
            .unwrap()
            .starts_with("round 3 line 0"));
        assert!(fs::read_to_string(rotated(dir, 2))
            .unwrap()
            .starts_with("round 2 line 0"));
        assert!(!rotated(dir, 3).exists(), "three files in all");

        let t = tail(dir, 2).unwrap();
        assert_eq!(t, vec!["round 3 line 99", "after rotation"]);
    }

    #[test]
    fn following_returns_each_complete_line_once_across_a_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut child = open_for_child(dir).unwrap();
        write!(child, "one\ntwo\nthr").unwrap();
        let first = read(dir, LogQuery::Tail(10)).unwrap();
        assert_eq!(first.lines, ["one", "two"], "a line being written waits");
        assert_eq!(first.offset, 8);

        write!(child, "ee\nfour\n").unwrap();
        let next = read(dir, LogQuery::Since(first.offset)).unwrap();
        assert_eq!(next.lines, ["three", "four"]);
        let idle = read(dir, LogQuery::Since(next.offset)).unwrap();
        assert!(idle.lines.is_empty());
        assert_eq!(idle.offset, next.offset);

        // Written, then rotated away before the next read: still seen once.
        writeln!(child, "five").unwrap();
        assert!(rotate_if_needed(dir, 4, 3).unwrap());
        writeln!(child, "six").unwrap();
        let after = read(dir, LogQuery::Since(idle.offset)).unwrap();
        assert_eq!(after.lines, ["five", "six"]);
        assert_eq!(after.offset, 4);
    }

    #[test]
    fn notes_are_marked_as_the_agent_s() {
        let tmp = tempfile::tempdir().unwrap();
        note(tmp.path(), "starting: srv --port 1");
        let t = tail(tmp.path(), 5).unwrap();
        assert_eq!(t.len(), 1);
        assert!(
            t[0].contains("gpufleet-agent] starting: srv --port 1"),
            "{}",
            t[0]
        );
    }
}
