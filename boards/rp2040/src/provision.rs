//! The provisioning task: receive tickets from `edge-client provision` over USB into flash.
//!
//! The protocol (offer, accept, ticket bytes, per-ticket acknowledgements) and the rules that make
//! a half-written ticket harmless are core-nostd's (`provision::asynch::receive_tickets`); this
//! task decides *when* it runs: whenever the host starts talking on the provisioning interface,
//! at boot or later, as often as it likes. The ticket store is locked only once the first bytes
//! have arrived, so an idle USB cable never blocks the inference loop, and it is released when
//! the transfer ends, fails, or the host goes silent (the link's idle timeout).

use core_nostd::provision::asynch;
use embassy_time::Duration;
use log::{info, warn};

use crate::config;
use crate::inference::TICKETS_ADDED;
use crate::store::Store;
use crate::usb::UsbLink;

/// Bytes read from USB per call (a few full-speed packets).
const RX_BUF: usize = 256;

/// After a failed transfer, input is discarded until the host has been quiet this long, so the
/// rest of an aborted transfer is not mistaken for the start of a new one.
const QUIET: Duration = Duration::from_millis(500);

/// Runs forever.
#[embassy_executor::task]
pub async fn task(mut link: UsbLink, store: &'static Store) -> ! {
    let mut rx = [0u8; RX_BUF];
    loop {
        link.wait_for_host().await;
        info!("provisioning: host is talking; waiting for the ticket store");
        let result = {
            let _exclusive = store.session().await;
            // Only tickets for the model this firmware's sessions ask for: a ticket carries its
            // architecture hash but not its model name, so another model's tickets could never be
            // spent.
            asynch::receive_tickets(&mut link, &mut store.handle(), Some(config::MODEL_ID), &mut rx).await
        };
        match result {
            Ok(done) => {
                info!(
                    "provisioning: {} '{}' ticket(s) stored, {} live",
                    done.stored,
                    done.model_id,
                    store.live_count()
                );
                if done.stored > 0 {
                    TICKETS_ADDED.signal(());
                }
            }
            Err(e) => {
                warn!("provisioning failed: {e:?}");
                link.drain_until_quiet(QUIET).await;
            }
        }
    }
}
