//! The ratings database: Bookinfo's ratings reads stars from MongoDB over
//! plain TCP. This stands in for it with a one-line protocol (`GET
//! ratings <id>` → `Reviewer1=5 Reviewer2=4`), one connection per lookup,
//! so the mesh carries real TCP traffic (Istio's `istio_tcp_*` metrics)
//! through ratings' outbound TCP listener and the database's sidecar.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Stars per reviewer, as Bookinfo's database holds them.
const RATINGS: [(&str, u8); 2] = [("Reviewer1", 5), ("Reviewer2", 4)];

/// Longest a lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves lookups until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Err(error) = answer(stream).await {
                tracing::debug!(%error, "database connection failed");
            }
        });
    }
}

async fn answer(stream: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match line.trim().strip_prefix("GET ratings ") {
        Some(_) => RATINGS
            .iter()
            .map(|(reviewer, stars)| format!("{reviewer}={stars}"))
            .collect::<Vec<_>>()
            .join(" "),
        None => "ERR unknown command".to_owned(),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Reads the ratings of `product` from `database` (`host:port`: ratings'
/// outbound TCP listener for it, or the service itself): reviewer and stars.
pub async fn lookup(database: &str, product: &str) -> std::io::Result<Vec<(String, u8)>> {
    let exchange = async {
        let mut stream = TcpStream::connect(database).await?;
        stream
            .write_all(format!("GET ratings {product}\n").as_bytes())
            .await?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).await?;
        parse(&line)
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "database lookup"))?
}

fn parse(line: &str) -> std::io::Result<Vec<(String, u8)>> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.trim().to_owned());
    line.split_whitespace()
        .map(|pair| {
            let (reviewer, stars) = pair.split_once('=').ok_or_else(bad)?;
            Ok((reviewer.to_owned(), stars.parse().map_err(|_| bad())?))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .and_then(|ratings| {
            if ratings.is_empty() {
                Err(bad())
            } else {
                Ok(ratings)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lookup_reads_every_reviewer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener));
        let ratings = lookup(&address.to_string(), "0").await.unwrap();
        assert_eq!(
            ratings,
            [("Reviewer1".to_owned(), 5), ("Reviewer2".to_owned(), 4)]
        );
        server.abort();
        assert!(parse("ERR unknown command\n").is_err());
    }
}
