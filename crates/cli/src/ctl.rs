//! `phalanx ctl`: drive a running node through its REST API.
//!
//! Every command prints the API's answer as pretty JSON on stdout. Exit status:
//!
//! | status | meaning |
//! |--------|---------|
//! | 0 | done |
//! | 1 | the API answered with an error, printed as JSON (`{"error":{...}}`) on stderr |
//! | 2 | usage: bad arguments, no token, an unreadable token file, a bad URL |
//! | 3 | the API could not be reached, did not answer in time, or answered as no Phalanx API does |
//! | 4 | `pay` / `keysend`: the payment was made and failed (its JSON is on stdout) |

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use phalanx_api::{
    ApiClient, ApiToken, ClientError, CloseChannelRequest, ConnectPeerRequest,
    CreateInvoiceRequest, CreateOfferRequest, Empty, ErrorBody, KeysendRequest,
    ListChannelsResponse, ListPaymentsResponse, ListPeersResponse, OpenChannelRequest,
    PayInvoiceRequest, PayOfferRequest, Payment, PaymentStatus, SendOnchainRequest, StateResponse,
};
use serde::Serialize;

/// Exit status: the API answered with an error.
pub const EXIT_API_ERROR: u8 = 1;
/// Exit status: bad usage (clap's own usage errors also exit 2).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the API could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit status: the payment failed.
pub const EXIT_PAYMENT_FAILED: u8 = 4;

/// The default API address.
const DEFAULT_API: &str = "http://127.0.0.1:8080";

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 done, 1 API error (JSON on stderr), 2 usage, \
                        3 API unreachable or timed out, 4 payment failed."
)]
pub struct CtlArgs {
    /// The node's API.
    #[arg(long, env = "PHALANX_API", default_value = DEFAULT_API)]
    api: String,
    /// A file holding the API token (the node writes it, mode 0600).
    #[arg(long, env = "PHALANX_API_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The API token itself; wins over --token-file. Prefer the file: arguments show in
    /// the process list.
    #[arg(long, env = "PHALANX_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Give up on a request after this many seconds.
    #[arg(long, env = "PHALANX_API_TIMEOUT_SECS", default_value_t = phalanx_api::DEFAULT_REQUEST_TIMEOUT_SECS)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// The node's id, network, chain tip, peers, channels, epoch.
    Getinfo,
    /// The instance's state (needs no token): SERVER_ACTIVE, WAITING_TO_START, ...
    State,
    /// A fresh on-chain address.
    Newaddress,
    /// On-chain and Lightning balances.
    Balance,
    /// Send on chain.
    Sendonchain {
        /// Where to.
        address: String,
        /// How much, in satoshis.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        amount_sat: Option<u64>,
        /// Send the whole confirmed balance, less the fee.
        #[arg(long)]
        all: bool,
        /// Fee rate in sat/vB (default: the node's estimate).
        #[arg(long)]
        fee_rate: Option<u64>,
    },
    /// Connected peers.
    Peers,
    /// Connect to a peer.
    Connect {
        /// node_id@host:port
        uri: String,
    },
    /// Disconnect a peer.
    Disconnect {
        /// The peer's node id.
        node_id: String,
    },
    /// Open a channel (connecting first if an address is given).
    Openchannel {
        /// node_id or node_id@host:port
        peer: String,
        /// Capacity, in satoshis.
        amount_sat: u64,
        /// Give the counterparty this much at opening, in millisatoshis.
        #[arg(long, default_value_t = 0)]
        push_msat: u64,
        /// Announce the channel.
        #[arg(long)]
        public: bool,
    },
    /// The node's channels.
    Channels,
    /// Close a channel.
    Closechannel {
        /// The channel id (hex).
        channel_id: String,
        /// Force close: broadcast our latest commitment.
        #[arg(long)]
        force: bool,
    },
    /// Create a BOLT 11 invoice.
    Invoice {
        /// The amount in millisatoshis (none: the payer chooses).
        amount_msat: Option<u64>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Seconds until it expires (default: the node's).
        #[arg(long)]
        expiry: Option<u32>,
    },
    /// Pay a BOLT 11 invoice.
    Pay {
        /// The invoice.
        invoice: String,
        /// The amount, for an invoice without one.
        #[arg(long)]
        amount_msat: Option<u64>,
        /// Return once the payment is under way instead of waiting for its outcome.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the outcome, in seconds (default: the node's).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Create a BOLT 12 offer (payable many times; reached through blinded paths over
    /// the node's channels).
    Offer {
        /// The amount of each payment in millisatoshis (none: the payer chooses).
        amount_msat: Option<u64>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Pay a BOLT 12 offer.
    Payoffer {
        /// The offer (`lno1...`).
        offer: String,
        /// The amount, for an offer without one.
        #[arg(long)]
        amount_msat: Option<u64>,
        /// Return once the payment is under way instead of waiting for its outcome.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the outcome, in seconds (default: the node's).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Send a spontaneous payment.
    Keysend {
        /// The payee's node id.
        node_id: String,
        /// The amount in millisatoshis.
        amount_msat: u64,
        /// Return once the payment is under way instead of waiting for its outcome.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the outcome, in seconds (default: the node's).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Every payment, newest first.
    Payments,
    /// One payment, by its hash or by its id.
    Payment {
        /// Its payment hash (hex).
        #[arg(required_unless_present = "id", conflicts_with = "id")]
        payment_hash: Option<String>,
        /// Its payment id (hex) instead, as the payment commands print it: the way to
        /// follow a payment to an offer before its invoice gives it a hash.
        #[arg(long)]
        id: Option<String>,
    },
}

/// What went wrong, with its exit status.
enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Self::Client(err)
    }
}

/// Runs a `ctl` command; the exit status is in the module's docs.
pub async fn run(args: CtlArgs) -> ExitCode {
    match execute(args).await {
        Ok(code) => code,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Client(ClientError::Api { error, .. })) => {
            let body = ErrorBody { error };
            match serde_json::to_string_pretty(&body) {
                Ok(json) => eprintln!("{json}"),
                Err(_) => eprintln!("error: {}", body.error),
            }
            ExitCode::from(EXIT_API_ERROR)
        }
        Err(Failure::Client(err @ ClientError::InvalidUrl { .. })) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Client(err)) => {
            eprintln!("error: {err}");
            if matches!(err, ClientError::Connect { .. }) {
                eprintln!("hint: is the node running, and is --api (PHALANX_API) its API address?");
            }
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

fn token(args: &CtlArgs) -> Result<ApiToken, Failure> {
    if let Some(token) = &args.token {
        return ApiToken::new(token.trim())
            .map_err(|e| Failure::Usage(format!("--token (PHALANX_API_TOKEN): {e}")));
    }
    match &args.token_file {
        Some(path) => phalanx_api::read_token(path).map_err(|e| Failure::Usage(e.to_string())),
        None => Err(Failure::Usage(
            "no API token: give --token-file (PHALANX_API_TOKEN_FILE) or --token (PHALANX_API_TOKEN)"
                .to_owned(),
        )),
    }
}

fn print(value: &impl Serialize) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Client(ClientError::Encode(e.to_string())))?;
    println!("{json}");
    Ok(())
}

/// Prints a payment; a failed one exits 4.
fn print_payment(payment: &Payment) -> Result<ExitCode, Failure> {
    print(payment)?;
    Ok(if payment.status == PaymentStatus::Failed {
        ExitCode::from(EXIT_PAYMENT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Waiting for a payment's outcome must not outlast the request.
fn payment_timeout(client: ApiClient, wait_secs: Option<u64>, no_wait: bool) -> ApiClient {
    let wait = Duration::from_secs(wait_secs.unwrap_or(phalanx_api::DEFAULT_PAYMENT_TIMEOUT_SECS));
    let needed = wait + Duration::from_secs(10);
    if !no_wait && needed > client.timeout() {
        return client.with_timeout(needed);
    }
    client
}

async fn execute(args: CtlArgs) -> Result<ExitCode, Failure> {
    if args.timeout_secs == 0 {
        return Err(Failure::Usage("--timeout-secs is zero".to_owned()));
    }
    let mut client =
        ApiClient::new(&args.api)?.with_timeout(Duration::from_secs(args.timeout_secs));
    if !matches!(args.command, CtlCommand::State) {
        client = client.with_token(token(&args)?);
    }
    match args.command {
        CtlCommand::State => print(&StateResponse {
            state: client.state().await?,
        })?,
        CtlCommand::Getinfo => print(&client.info().await?)?,
        CtlCommand::Newaddress => print(&client.new_address().await?)?,
        CtlCommand::Balance => print(&client.balance().await?)?,
        CtlCommand::Sendonchain {
            address,
            amount_sat,
            all,
            fee_rate,
        } => {
            let req = SendOnchainRequest {
                address,
                amount_sat,
                send_all: all,
                fee_rate_sat_per_vb: fee_rate,
            };
            print(&client.send_onchain(&req).await?)?
        }
        CtlCommand::Peers => print(&ListPeersResponse {
            peers: client.list_peers().await?,
        })?,
        CtlCommand::Connect { uri } => {
            let req = ConnectPeerRequest::from_uri(&uri).map_err(|e| Failure::Usage(e.message))?;
            print(&client.connect_peer(&req).await?)?
        }
        CtlCommand::Disconnect { node_id } => {
            client.disconnect_peer(&node_id).await?;
            print(&Empty {})?
        }
        CtlCommand::Openchannel {
            peer,
            amount_sat,
            push_msat,
            public,
        } => {
            let (node_id, address) = match peer.split_once('@') {
                Some((node_id, address)) => (node_id.to_owned(), Some(address.to_owned())),
                None => (peer, None),
            };
            let req = OpenChannelRequest {
                node_id,
                address,
                amount_sat,
                push_msat,
                public,
            };
            print(&client.open_channel(&req).await?)?
        }
        CtlCommand::Channels => print(&ListChannelsResponse {
            channels: client.list_channels().await?,
        })?,
        CtlCommand::Closechannel { channel_id, force } => {
            client
                .close_channel(&channel_id, &CloseChannelRequest { force })
                .await?;
            print(&Empty {})?
        }
        CtlCommand::Invoice {
            amount_msat,
            description,
            expiry,
        } => {
            let req = CreateInvoiceRequest {
                amount_msat,
                description,
                expiry_secs: expiry,
            };
            print(&client.create_invoice(&req).await?)?
        }
        CtlCommand::Pay {
            invoice,
            amount_msat,
            no_wait,
            timeout,
        } => {
            let client = payment_timeout(client, timeout, no_wait);
            let req = PayInvoiceRequest {
                invoice,
                amount_msat,
                wait: !no_wait,
                timeout_secs: timeout,
            };
            return print_payment(&client.pay_invoice(&req).await?);
        }
        CtlCommand::Offer {
            amount_msat,
            description,
        } => {
            let req = CreateOfferRequest {
                amount_msat,
                description,
            };
            print(&client.create_offer(&req).await?)?
        }
        CtlCommand::Payoffer {
            offer,
            amount_msat,
            no_wait,
            timeout,
        } => {
            let client = payment_timeout(client, timeout, no_wait);
            let req = PayOfferRequest {
                offer,
                amount_msat,
                wait: !no_wait,
                timeout_secs: timeout,
            };
            return print_payment(&client.pay_offer(&req).await?);
        }
        CtlCommand::Keysend {
            node_id,
            amount_msat,
            no_wait,
            timeout,
        } => {
            let client = payment_timeout(client, timeout, no_wait);
            let req = KeysendRequest {
                node_id,
                amount_msat,
                wait: !no_wait,
                timeout_secs: timeout,
            };
            return print_payment(&client.keysend(&req).await?);
        }
        CtlCommand::Payments => print(&ListPaymentsResponse {
            payments: client.list_payments().await?,
        })?,
        CtlCommand::Payment {
            payment_hash: Some(payment_hash),
            ..
        } => print(&client.get_payment(&payment_hash).await?)?,
        CtlCommand::Payment {
            payment_hash: None,
            id,
        } => {
            let id = id.ok_or_else(|| Failure::Usage("a payment hash or --id".into()))?;
            print(&client.get_payment_by_id(&id).await?)?
        }
    }
    Ok(ExitCode::SUCCESS)
}
