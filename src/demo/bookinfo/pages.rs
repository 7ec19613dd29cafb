//! What each Bookinfo service answers: productpage's HTML, details',
//! reviews' and ratings' JSON, in the shapes Istio's sample returns them.

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use serde_json::{Value, json};

use super::App;
use super::database;
use super::upstream::forwarded;
use crate::demo::topology::Role;

/// How long productpage waits for details and reviews (Bookinfo's 3 s).
const PAGE_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long reviews waits for ratings (Bookinfo's 2.5 s).
const RATINGS_TIMEOUT: Duration = Duration::from_millis(2500);

/// Bookinfo's one book.
const PRODUCT_ID: &str = "0";

/// The product page: details and reviews, each fetched through the sidecar;
/// a service that fails leaves its part of the page apologising, as
/// Bookinfo's page does.
pub async fn product_page(app: &App, incoming: &HeaderMap) -> String {
    let headers = forwarded(incoming);
    let details = app
        .upstream()
        .get(
            "details",
            9080,
            &format!("/details/{PRODUCT_ID}"),
            &headers,
            PAGE_CALL_TIMEOUT,
        )
        .await;
    let reviews = app
        .upstream()
        .get(
            "reviews",
            9080,
            &format!("/reviews/{PRODUCT_ID}"),
            &headers,
            PAGE_CALL_TIMEOUT,
        )
        .await;
    let details = match details.as_ref().map(parse) {
        Ok(Some(d)) => format!(
            "<dl><dt>Author</dt><dd>{}</dd><dt>Year</dt><dd>{}</dd><dt>Publisher</dt><dd>{}</dd></dl>",
            d["author"], d["year"], d["publisher"]
        ),
        _ => "<p>Sorry, product details are currently unavailable for this book.</p>".to_owned(),
    };
    let reviews = match reviews.as_ref().map(parse) {
        Ok(Some(r)) => render_reviews(&r),
        _ => "<p>Sorry, product reviews are currently unavailable for this book.</p>".to_owned(),
    };
    format!(
        "<!doctype html><title>Simple Bookstore App</title>\
         <h1>The Comedy of Errors</h1>{details}<h2>Reviews</h2>{reviews}\n"
    )
}

fn render_reviews(reviews: &Value) -> String {
    let mut out = String::new();
    for review in reviews["reviews"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "<blockquote>{}<footer>{}</footer>",
            review["text"].as_str().unwrap_or_default(),
            review["reviewer"].as_str().unwrap_or_default()
        ));
        if let Some(stars) = review["rating"]["stars"].as_u64() {
            let color = review["rating"]["color"].as_str().unwrap_or("black");
            out.push_str(&format!(
                "<span style=\"color:{color}\">{}</span>",
                "★".repeat(stars as usize)
            ));
        } else if let Some(error) = review["rating"]["error"].as_str() {
            out.push_str(&format!("<span>{error}</span>"));
        }
        out.push_str("</blockquote>");
    }
    out.push_str(&format!(
        "<p><small>reviews served by {}</small></p>",
        reviews["podname"].as_str().unwrap_or("?")
    ));
    out
}

fn parse(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// details: the book's facts.
pub fn details(id: &str) -> Value {
    json!({
        "id": id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    })
}

/// reviews: two reviews; v2 and v3 add each reviewer's stars from ratings
/// (black on v2, red on v3), or the reason there are none.
pub async fn reviews(app: &App, id: &str, incoming: &HeaderMap) -> Value {
    let workload = app.workload();
    let stars = if let Role::Reviews { with_ratings: true } = workload.role {
        let answer = app
            .upstream()
            .get(
                "ratings",
                9080,
                &format!("/ratings/{id}"),
                &forwarded(incoming),
                RATINGS_TIMEOUT,
            )
            .await;
        Some(answer.map(|body| parse(&body)))
    } else {
        None
    };
    let color = if workload.version == "v3" {
        "red"
    } else {
        "black"
    };
    let rating = |reviewer: &str| match &stars {
        None => None,
        Some(Ok(Some(r))) => r["ratings"][reviewer]
            .as_u64()
            .map(|n| json!({"stars": n, "color": color})),
        Some(_) => Some(json!({"error": "Ratings service is currently unavailable"})),
    };
    let review = |reviewer: &str, text: &str| {
        let mut review = json!({"reviewer": reviewer, "text": text});
        if let Some(r) = rating(reviewer) {
            review["rating"] = r;
        }
        review
    };
    json!({
        "id": id,
        "podname": workload.name,
        "clustername": "null",
        "reviews": [
            review("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
            review("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."),
        ],
    })
}

/// ratings: every reviewer's stars, read from the database over TCP.
pub async fn ratings(app: &App, id: &str) -> Result<Value, std::io::Error> {
    let database = app.database().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotConnected, "no database listener")
    })?;
    let ratings = database::lookup(database, id).await?;
    let ratings: serde_json::Map<String, Value> = ratings
        .into_iter()
        .map(|(reviewer, stars)| (reviewer, json!(stars)))
        .collect();
    Ok(json!({"id": id, "ratings": ratings}))
}
