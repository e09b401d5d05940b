//! A plain blocking HTTP/1.1 client over `std::net::TcpStream` (one connection per request,
//! `Connection: close`; `Content-Length`, chunked and read-to-end bodies): the native
//! [`HttpTransport`] the tests run the S3 logic with against a real server. Plain HTTP only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use storage_s3::{HttpRequest, HttpResponse, HttpTransport, ResponseBody};

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked { left_in_chunk: u64 },
    UntilClose,
    Done,
}

#[derive(Debug)]
pub struct TcpBody {
    reader: BufReader<TcpStream>,
    framing: Framing,
}

fn line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut text = String::new();
    reader.read_line(&mut text).map_err(|error| format!("reading the response failed: {error}"))?;
    if text.is_empty() {
        return Err("the connection closed mid-response".into());
    }
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

impl ResponseBody for TcpBody {
    fn read(&mut self, max: usize) -> Result<Vec<u8>, String> {
        loop {
            let limit = match &mut self.framing {
                Framing::Done => return Ok(Vec::new()),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(Vec::new());
                }
                Framing::Length(left) => (*left).min(max as u64) as usize,
                Framing::Chunked { left_in_chunk: 0 } => {
                    let size_line = line(&mut self.reader)?;
                    let size_text = size_line.split(';').next().unwrap_or_default().trim();
                    let size =
                        u64::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
                    if size == 0 {
                        // Trailers, then the blank line.
                        while !line(&mut self.reader)?.is_empty() {}
                        self.framing = Framing::Done;
                        return Ok(Vec::new());
                    }
                    self.framing = Framing::Chunked { left_in_chunk: size };
                    continue;
                }
                Framing::Chunked { left_in_chunk } => (*left_in_chunk).min(max as u64) as usize,
                Framing::UntilClose => max,
            };
            let mut buffer = vec![0u8; limit];
            let count = self.reader.read(&mut buffer).map_err(|error| format!("reading the body failed: {error}"))?;
            buffer.truncate(count);
            match &mut self.framing {
                Framing::UntilClose if count == 0 => self.framing = Framing::Done,
                _ if count == 0 => return Err("the connection closed mid-body".into()),
                Framing::Length(left) => *left -= count as u64,
                Framing::Chunked { left_in_chunk } => {
                    *left_in_chunk -= count as u64;
                    if *left_in_chunk == 0 && !line(&mut self.reader)?.is_empty() {
                        return Err("a chunk does not end with CRLF".into());
                    }
                }
                _ => {}
            }
            return Ok(buffer);
        }
    }
}

impl HttpTransport for TcpTransport {
    type Body = TcpBody;

    fn send(&self, request: &HttpRequest<'_>) -> Result<HttpResponse<TcpBody>, String> {
        if request.https {
            return Err("the test transport speaks plain HTTP only".into());
        }
        let address = request
            .authority
            .to_socket_addrs()
            .map_err(|error| format!("resolving {}: {error}", request.authority))?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", request.authority))?;
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .map_err(|error| format!("connecting to {}: {error}", request.authority))?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(|error| error.to_string())?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(|error| error.to_string())?;
        let mut head =
            format!("{} {} HTTP/1.1\r\nHost: {}\r\n", request.method, request.path_and_query, request.authority);
        for (name, value) in request.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !request.body.is_empty() || matches!(request.method, "PUT" | "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut writer = &stream;
        writer.write_all(head.as_bytes()).map_err(|error| format!("sending the request: {error}"))?;
        writer.write_all(request.body).map_err(|error| format!("sending the body: {error}"))?;
        writer.flush().map_err(|error| format!("sending the request: {error}"))?;

        let mut reader = BufReader::new(stream);
        let status_line = line(&mut reader)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let header = line(&mut reader)?;
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let find = |name: &str| headers.iter().find(|(header, _)| header == name).map(|(_, value)| value.as_str());
        let framing = if request.method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Done
        } else if find("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked { left_in_chunk: 0 }
        } else if let Some(length) = find("content-length") {
            Framing::Length(length.parse().map_err(|_| format!("bad Content-Length {length:?}"))?)
        } else {
            Framing::UntilClose
        };
        Ok(HttpResponse { status, headers, body: TcpBody { reader, framing } })
    }
}
