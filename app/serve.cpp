// dshpc serve: the OpenAI-compatible server. Every rank runs this; rank 0 binds the HTTP port
// before the weights load (so /health answers 503 with progress meanwhile), runs the gateway's
// I/O threads and, on the main thread, the scheduler loop that drives the cluster (every MPI call
// of rank 0 is made there). The other ranks execute steps until rank 0 stops them.
//
// SIGTERM, SIGINT or SIGUSR1: drain — new requests get 503, requests in flight finish, then exit 0;
// a second signal stops at once (open requests end with an error).
#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "app/commands.h"
#include "app/config_file.h"
#include "app/frontend.h"
#include "app/job.h"
#include "app/job_failure.h"
#include "common/check.h"
#include "common/log.h"
#include "common/options.h"
#include "coordinator/scheduler_config.h"

namespace dshpc {
namespace {

std::vector<OptionSpec> options_table() {
  std::vector<OptionSpec> table = {
      {"config", "DEPLOY.yaml",
       "deployment file setting any of these options (the command line "
       "wins)",
       ""},
      {"host", "ADDR", "address to listen on", "0.0.0.0"},
      {"port", "N", "HTTP port (0: any free port, printed at start-up)", "8000"},
      {"tokenizer", "DIR", "tokenizer directory (tokenizer.json, tokenizer_config.json)",
       DSHPC_DEFAULT_TOKENIZER_DIR},
      {"served-model-name", "NAME", "the model name clients use (default: from --model)", ""},
      {"io-threads", "N", "HTTP I/O threads", "2"},
      {"max-connections", "N", "open connections at most", "1024"},
      {"max-body-bytes", "N", "largest request body", "8388608"},
      {"max-header-bytes", "N", "largest request line + headers", "16384"},
      {"read-timeout-ms", "N", "time a client may take to send a request", "30000"},
      {"drain-timeout-s", "N", "on SIGTERM, how long requests in flight may take to finish", "60"},
      {"request-timeout", "SECONDS",
       "deadline of a generation request without a \"timeout\" field, from its arrival; past "
       "it the request ends with finish_reason \"timeout\" (0: none)",
       "0"},
      {"max-request-timeout", "SECONDS",
       "largest \"timeout\" a request may ask for (larger: 400), also the deadline of requests "
       "that name none when --request-timeout is 0 (0: no maximum)",
       "0"},
  };
  for (OptionSpec& spec : scheduler_option_specs()) table.push_back(spec);
  for (OptionSpec& spec : model_job_options()) table.push_back(spec);
  return table;
}

int fail(const Status& status, int code = 1) {
  report_error("dshpc serve", status);
  return code;
}

StatusOr<GatewayConfig> gateway_config(const Options& opts) {
  GatewayConfig c;
  c.host = opts.get("host");
  ASSIGN_OR_RETURN(int64_t port, opts.get_int("port"));
  if (port < 0 || port > 65535) return invalid_argument("--port must be in [0, 65535]");
  c.port = static_cast<uint16_t>(port);
  ASSIGN_OR_RETURN(int64_t io_threads, opts.get_int("io-threads"));
  c.io_threads = static_cast<int>(io_threads);
  ASSIGN_OR_RETURN(int64_t max_connections, opts.get_int("max-connections"));
  c.max_connections = static_cast<int>(max_connections);
  ASSIGN_OR_RETURN(int64_t max_body, opts.get_int("max-body-bytes"));
  ASSIGN_OR_RETURN(int64_t max_header, opts.get_int("max-header-bytes"));
  if (max_body < 1 || max_header < 1)
    return invalid_argument("--max-body-bytes and --max-header-bytes must be positive");
  c.max_body_bytes = static_cast<size_t>(max_body);
  c.max_header_bytes = static_cast<size_t>(max_header);
  ASSIGN_OR_RETURN(int64_t read_timeout, opts.get_int("read-timeout-ms"));
  c.read_timeout = std::chrono::milliseconds(read_timeout);
  c.served_model_name = served_model_name(opts);
  ASSIGN_OR_RETURN(c.request_timeout_s, opts.get_double("request-timeout"));
  ASSIGN_OR_RETURN(c.max_request_timeout_s, opts.get_double("max-request-timeout"));
  RETURN_IF_ERROR(c.validate());
  return c;
}

}  // namespace

int run_serve(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse("dshpc serve", table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  Options opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text("dshpc serve",
                                  "Serves the model over an OpenAI-compatible HTTP API "
                                  "(/v1/completions, /v1/chat/completions, /v1/models, /health, "
                                  "/metrics, /tokenize, /detokenize). Run it under mpirun with "
                                  "tp × pp × dp ranks; rank 0 listens.",
                                  table)
                   .c_str(),
               stdout);
    return 0;
  }
  if (!opts.get("config").empty()) {
    Status applied = apply_config_file(opts.get("config"), table, opts);
    if (!applied.ok()) return fail(applied, 2);
  }
  if (opts.get("model").empty()) return fail(invalid_argument("--model is required"), 2);
  auto gateway_cfg = gateway_config(opts);
  if (!gateway_cfg.ok()) return fail(gateway_cfg.status(), 2);
  auto drain_timeout = opts.get_int("drain-timeout-s");
  if (!drain_timeout.ok()) return fail(drain_timeout.status(), 2);

  // Signals go to one waiting thread (rank 0), never to the MPI or I/O threads.
  const sigset_t signals = block_stop_signals();

  Frontend front;
  auto before_load = [&](const ProcessGroups& groups) -> Status {
    if (groups.rank != 0) return ok_status();
    RETURN_IF_ERROR(front.start(opts, *gateway_cfg, groups.layout.world_size()));
    const std::string url =
        "http://" + gateway_cfg->host + ":" + std::to_string(front.gateway->port());
    process_logger().info("dshpc serve: listening on " + url + " (loading the model)",
                          {{"event.action", "server.listening"},
                           {"url.full", url},
                           {"server.port", static_cast<int64_t>(front.gateway->port())}});
    return ok_status();
  };
  // Rank 0's loading progress on /health (503 with bytes and percent until ready).
  auto on_load_progress = [&front](int64_t done, int64_t total) {
    if (front.service) front.service->set_load_progress(done, total);
  };
  auto started = start_job("dshpc serve", opts, &argc, &argv, before_load, on_load_progress);
  if (!started.ok()) return 1;
  Job& job = **started;
  if (!job.coordinator()) {
    job.cluster->serve();
    return 0;
  }
  Cluster& cluster = *job.cluster;
  const ModelConfig& config = cluster.config();
  print_rank_report(job);

  auto scheduler_cfg = front.open(opts, cluster);
  if (!scheduler_cfg.ok()) {
    fail(scheduler_cfg.status());
    front.gateway->stop();
    return 2;
  }
  process_logger().info("dshpc serve: ready on http://" + gateway_cfg->host + ":" +
                            std::to_string(front.gateway->port()) + ", model " +
                            gateway_cfg->served_model_name + " (" +
                            model_family_name(config.family) + "), " +
                            describe_scheduler_config(*scheduler_cfg),
                        {{"event.action", "server.ready"}});

  // From here on a job that goes down ends the open requests with an error first (job_failure.h).
  RequestFailer request_failer(*front.gateway);

  // Signals: the first drains (bounded by --drain-timeout-s), the second stops at once; a
  // SIGTERM from Open MPI's launcher, which kills the job a second later, aborts it at once.
  std::mutex shutdown_mutex;
  std::condition_variable shutdown_cv;
  bool done = false;
  auto signal_thread = std::make_unique<StopSignals>(
      signals,
      StopSignals::Actions{
          "dshpc serve", "server", "failing the open requests and aborting",
          [&](int signal_number) {
            process_logger().info(
                "dshpc serve: signal " + std::to_string(signal_number) + ": draining (up to " +
                    std::to_string(*drain_timeout) + " s)",
                {{"event.action", "server.drain"}, {"dshpc.signal", signal_number}});
            front.gateway->begin_drain();
            front.service->begin_drain();
          },
          [&](int) { front.service->stop(); }});
  std::thread drain_watch([&] {
    // Once draining, requests in flight get --drain-timeout-s; then the rest end with an error.
    std::unique_lock<std::mutex> lock(shutdown_mutex);
    while (!done) {
      if (front.service->status().state == ServiceState::kDraining) {
        if (!shutdown_cv.wait_for(lock, std::chrono::seconds(*drain_timeout),
                                  [&] { return done; })) {
          front.service->stop(unavailable("the drain timeout passed"));
        }
        return;
      }
      shutdown_cv.wait_for(lock, std::chrono::milliseconds(200));
    }
  });

  front.service->run();  // returns when drained or stopped
  {
    std::lock_guard<std::mutex> lock(shutdown_mutex);
    done = true;
  }
  shutdown_cv.notify_all();
  drain_watch.join();
  signal_thread.reset();
  // The other ranks first: they expect rank 0's next message within the control timeout, and
  // the gateway may take its 2 s to close the connections.
  cluster.stop();
  front.gateway->stop(std::chrono::milliseconds(2000));
  process_logger().info("dshpc serve: stopped", {{"event.action", "server.stopped"}});
  return 0;
}

}  // namespace dshpc
