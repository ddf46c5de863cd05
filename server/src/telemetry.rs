//! Logging through `tracing`, and optional span export over OTLP
//! (`--experimental-enable-distributed-tracing`, etcd's flag names).

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Flags;

/// Keeps the exporter alive; flushes spans when dropped.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `--log-level`.
pub fn init(flags: &Flags) -> Result<Telemetry, String> {
    // openraft warns whenever the waiter of a proposal has gone, which a
    // client that cancels its request (or times out) does: not a problem.
    let quiet = "openraft::raft::responder=error".parse().map_err(|e| format!("log filter: {e}"))?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&flags.log_level).add_directive(quiet));
    // Colours only on a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The log takes events only. Spans exist for the OTLP export: given to the
    // log layer too, every request's five or so spans were formatted into
    // strings and stored, about 7% of a put's CPU, for log lines that seldom
    // happen inside a request. Without an exporter no layer wants a span, so
    // the span macros cost a cached callsite check.
    let events_only = tracing_subscriber::filter::filter_fn(|m| m.is_event());
    let fmt = tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).with_filter(filter.and(events_only));
    if !flags.experimental_enable_distributed_tracing {
        tracing_subscriber::registry().with(fmt).try_init().map_err(|e| e.to_string())?;
        return Ok(Telemetry { provider: None });
    }
    let endpoint = if flags.experimental_distributed_tracing_address.contains("://") {
        flags.experimental_distributed_tracing_address.clone()
    } else {
        format!("http://{}", flags.experimental_distributed_tracing_address)
    };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let instance = flags.experimental_distributed_tracing_instance_id.clone().unwrap_or_else(|| flags.name.clone());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(flags.experimental_distributed_tracing_service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance))
        .build();
    let rate = flags.experimental_distributed_tracing_sampling_rate as f64 / 1_000_000.0;
    let sampler = if rate > 0.0 {
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(rate)
    } else {
        opentelemetry_sdk::trace::Sampler::AlwaysOn
    };
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("kvd");
    // kvd's own spans, whatever the log level says (tests log at warn and
    // still export); not the debug and trace spans of the libraries under it.
    let spans = tracing_subscriber::filter::Targets::new().with_target("kvd", tracing::Level::INFO);
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans);
    tracing_subscriber::registry().with(fmt).with(otel).try_init().map_err(|e| e.to_string())?;
    Ok(Telemetry { provider: Some(provider) })
}
