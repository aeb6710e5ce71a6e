//! Request/reply: publish a request and await the handler's typed answer, with a timeout.
//!
//! Run with `cargo run -p herald --example request_reply`.

use std::time::Duration;

use herald::{Context, HandlerError, Herald, RequestError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct RenderInvoice {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    order: u64,
    pdf_url: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let herald = Herald::builder().build().await?;
    herald
        .subscribe("renderer", "invoice.render")
        .handle(|req: RenderInvoice, _ctx: Context| async move {
            if req.order == 0 {
                return Err(HandlerError::permanent("order 0 does not exist"));
            }
            Ok(Invoice {
                order: req.order,
                pdf_url: format!("https://files.example/invoices/{}.pdf", req.order),
            })
        })
        .await?;

    let invoice: Invoice = herald
        .request("invoice.render", &RenderInvoice { order: 42 })
        .timeout(Duration::from_secs(2))
        .await?;
    println!("got {invoice:?}");

    match herald
        .request::<_, Invoice>("invoice.render", &RenderInvoice { order: 0 })
        .await
    {
        Err(RequestError::Failed(reason)) => println!("refused: {reason}"),
        other => println!("unexpected: {other:?}"),
    }
    match herald
        .request::<_, Invoice>("invoice.nobody", &RenderInvoice { order: 1 })
        .await
    {
        Err(e) => println!("as expected: {e}"),
        Ok(_) => println!("unexpected reply"),
    }
    herald.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
