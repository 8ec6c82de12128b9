// Prometheus metrics: a small thread-safe registry of counters, gauges and histograms rendered in
// the text exposition format 0.0.4, and ServerMetrics, the metrics fennec serves at /metrics under
// vLLM's names with the `fennec:` prefix.
//
// Updating a metric (inc, set, observe) is lock-free: atomics only, safe from any thread.
// labels() takes the family's mutex and looks its child up, so a hot path keeps the returned
// reference. Metrics live as long as their Registry and never move. Families render in
// registration order, children in order of their label values.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace fennec::server {

// Label name -> value pairs, in the order they are rendered.
using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void inc(double v = 1.0);  // v < 0 or NaN is ignored: a counter only goes up
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void inc(double v = 1.0) { value_.fetch_add(v, std::memory_order_relaxed); }
  void dec(double v = 1.0) { value_.fetch_sub(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // Finite upper bounds (sorted and deduplicated here; +Inf is implied and dropped if given).
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);  // counted in the first bucket with v <= bound; NaN is ignored

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (== count)
    uint64_t count = 0;
    double sum = 0;
  };
  // Bucket counts are read one by one while observe() may run: count is taken as the +Inf
  // bucket, so the rendered +Inf bucket always equals _count.
  Snapshot snapshot() const;
  const std::vector<double>& upper_bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // per bucket (not cumulative), +Inf last
  std::atomic<double> sum_{0.0};
};

// One metric name with its HELP and TYPE; children differ by label values.
class MetricFamily {
 public:
  virtual ~MetricFamily() = default;
  const std::string& name() const { return name_; }
  virtual const char* type() const = 0;  // "counter", "gauge", "histogram"
  // Appends "# HELP", "# TYPE" and every child's samples.
  virtual void render(std::string& out) const = 0;

 protected:
  MetricFamily(std::string name, std::string help, std::vector<std::string> label_names,
               Labels const_labels);
  // `{const labels, variable labels[, extra]}`, or "" when there are none; values escaped.
  std::string label_text(const std::vector<std::string>& values, const std::string& extra) const;
  void render_header(std::string& out) const;

  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
  Labels const_labels_;
};

template <class Metric>
class Family final : public MetricFamily {
 public:
  // Made by Registry. bounds: histograms only.
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         Labels const_labels, std::vector<double> bounds);
  // The child with these values, one per label name in order, created on first use. A wrong
  // number of values is a programming error (asserted; padded with "" or cut in release).
  Metric& labels(const std::vector<std::string>& values);
  const char* type() const override;
  void render(std::string& out) const override;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Metric>> children_;
};

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

class Registry {
 public:
  // Names follow Prometheus ([a-zA-Z_:][a-zA-Z0-9_:]*; labels without ':'). Registering a name
  // again with the same type returns the first family; with another type is a programming
  // error (asserted; in release the new family works but is not rendered).
  Family<Counter>& counter_family(const std::string& name, const std::string& help,
                                  std::vector<std::string> label_names, Labels const_labels = {});
  Family<Gauge>& gauge_family(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names, Labels const_labels = {});
  Family<Histogram>& histogram_family(const std::string& name, const std::string& help,
                                      std::vector<double> upper_bounds,
                                      std::vector<std::string> label_names,
                                      Labels const_labels = {});
  // A family without variable labels: its one child, rendered from the start (at 0).
  Counter& counter(const std::string& name, const std::string& help, Labels const_labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, Labels const_labels = {});
  Histogram& histogram(const std::string& name, const std::string& help,
                       std::vector<double> upper_bounds, Labels const_labels = {});

  // The text exposition format 0.0.4 (Content-Type: text/plain; version=0.0.4; charset=utf-8).
  std::string render() const;

 private:
  template <class Metric>
  Family<Metric>& add(const std::string& name, const std::string& help,
                      std::vector<std::string> label_names, Labels const_labels,
                      std::vector<double> bounds);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_;
  std::vector<std::unique_ptr<MetricFamily>> unrendered_;  // clashing registrations
};

// 1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's build_1_2_5_buckets).
std::vector<double> one_two_five_buckets(double max_value);

// fennec's serving metrics, each labelled model_name="<served name>", named as vLLM names them
// (vllm: -> fennec:). The server updates members directly: metrics.num_requests_running.set(3),
// metrics.request_success.labels({"stop"}).inc().
struct ServerMetrics {
  // max_model_len: the context length; the token-count histograms' buckets stop there.
  ServerMetrics(const std::string& model_name, int max_model_len);
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  Registry registry;  // first: the members below live in it

  Gauge& num_requests_running;       // fennec:num_requests_running
  Gauge& num_requests_waiting;       // fennec:num_requests_waiting
  Gauge& kv_cache_usage_perc;        // fennec:kv_cache_usage_perc, 0..1 of the KV blocks in use
  Counter& prefix_cache_queries;     // fennec:prefix_cache_queries_total, prompt tokens looked up
  Counter& prefix_cache_hits;        // fennec:prefix_cache_hits_total, of those found cached
  Counter& prompt_tokens;            // fennec:prompt_tokens_total
  Counter& generation_tokens;        // fennec:generation_tokens_total
  Counter& num_preemptions;          // fennec:num_preemptions_total
  Histogram& time_to_first_token;    // fennec:time_to_first_token_seconds
  Histogram& inter_token_latency;    // fennec:inter_token_latency_seconds
  Histogram& e2e_request_latency;    // fennec:e2e_request_latency_seconds
  Histogram& request_prompt_tokens;  // fennec:request_prompt_tokens
  Histogram& request_generation_tokens;  // fennec:request_generation_tokens
  // fennec:request_success_total{finished_reason}: labels({"stop"|"length"|"abort"|"error"}),
  // all four present from the start.
  Family<Counter>& request_success;
  // fennec:http_requests_total{status}: status is the code's class ("2xx", "4xx", ...).
  Family<Counter>& http_requests;
  // Energy and cost of finished requests (docs/ras.md). fennec:energy_joules_total{source}:
  // labels({"measured"|"estimated"}); fennec:cost_usd_total.
  Family<Counter>& energy_joules;
  Counter& cost_usd;
  // Device health and telemetry (docs/ras.md). fennec:device_health_state{device}: 0 healthy,
  // 1 suspect, 2 unhealthy, 3 drained; fennec:device_temperature_celsius{device,sensor};
  // fennec:device_power_watts{device,sensor}.
  Family<Gauge>& device_health;
  Family<Gauge>& device_temperature;
  Family<Gauge>& device_power;

  // Counts one HTTP response with this status code in http_requests.
  void count_http_response(int status);
  std::string render() const { return registry.render(); }
};

}  // namespace fennec::server
