#include "server/metrics.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>
#include <type_traits>

namespace fennec::server {

namespace {

[[maybe_unused]] bool valid_name(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// Go's and Python's float spellings: NaN, +Inf, -Inf; otherwise the shortest exact form, with
// ".0" on integral values as vLLM's (Python) exposition writes them (le="1.0").
std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, ec == std::errc() ? end : buf);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// Label values: backslash, double quote and line feed are escaped.
void append_label_value(std::string& out, const std::string& v) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

// HELP text: backslash and line feed are escaped.
void append_help(std::string& out, const std::string& v) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

void append_sample(std::string& out, const std::string& name, const std::string& labels,
                   const std::string& value) {
  out += name;
  out += labels;
  out += ' ';
  out += value;
  out += '\n';
}

}  // namespace

void Counter::inc(double v) {
  if (v > 0) value_.fetch_add(v, std::memory_order_relaxed);  // false for NaN and v <= 0
}

Histogram::Histogram(std::vector<double> upper_bounds) {
  for (double b : upper_bounds) {
    if (std::isfinite(b)) bounds_.push_back(b);
  }
  std::sort(bounds_.begin(), bounds_.end());
  bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
  counts_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) {
  if (std::isnan(v)) return;
  size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

MetricFamily::MetricFamily(std::string name, std::string help, std::vector<std::string> label_names,
                           Labels const_labels)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      const_labels_(std::move(const_labels)) {
  assert(valid_name(name_, true) && "invalid metric name");
  for ([[maybe_unused]] const auto& [label, value] : const_labels_) {
    assert(valid_name(label, false) && label.rfind("__", 0) != 0 && "invalid label name");
  }
  for ([[maybe_unused]] const std::string& label : label_names_) {
    assert(valid_name(label, false) && label.rfind("__", 0) != 0 && "invalid label name");
  }
}

std::string MetricFamily::label_text(const std::vector<std::string>& values,
                                     const std::string& extra) const {
  std::string out;
  auto add = [&](const std::string& label, const std::string& value) {
    out += out.empty() ? '{' : ',';
    out += label;
    out += "=\"";
    append_label_value(out, value);
    out += '"';
  };
  for (const auto& [label, value] : const_labels_) add(label, value);
  for (size_t i = 0; i < label_names_.size() && i < values.size(); ++i) {
    add(label_names_[i], values[i]);
  }
  if (!extra.empty()) {
    out += out.empty() ? '{' : ',';
    out += extra;
  }
  if (!out.empty()) out += '}';
  return out;
}

void MetricFamily::render_header(std::string& out) const {
  out += "# HELP ";
  out += name_;
  out += ' ';
  append_help(out, help_);
  out += "\n# TYPE ";
  out += name_;
  out += ' ';
  out += type();
  out += '\n';
}

template <class Metric>
Family<Metric>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                       Labels const_labels, std::vector<double> bounds)
    : MetricFamily(std::move(name), std::move(help), std::move(label_names),
                   std::move(const_labels)),
      bounds_(std::move(bounds)) {
  if constexpr (std::is_same_v<Metric, Histogram>) {
    for ([[maybe_unused]] const std::string& label : label_names_) {
      assert(label != "le" && "'le' is reserved for histogram buckets");
    }
  }
}

template <class Metric>
Metric& Family<Metric>::labels(const std::vector<std::string>& values) {
  assert(values.size() == label_names_.size() && "one value per label name");
  std::vector<std::string> key = values;
  key.resize(label_names_.size());
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_ptr<Metric>& child = children_[std::move(key)];
  if (!child) {
    if constexpr (std::is_same_v<Metric, Histogram>) {
      child = std::make_unique<Histogram>(bounds_);
    } else {
      child = std::make_unique<Metric>();
    }
  }
  return *child;
}

template <class Metric>
const char* Family<Metric>::type() const {
  if constexpr (std::is_same_v<Metric, Counter>) return "counter";
  if constexpr (std::is_same_v<Metric, Gauge>) return "gauge";
  return "histogram";
}

template <class Metric>
void Family<Metric>::render(std::string& out) const {
  render_header(out);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [values, child] : children_) {
    if constexpr (std::is_same_v<Metric, Histogram>) {
      Histogram::Snapshot s = child->snapshot();
      const std::vector<double>& bounds = child->upper_bounds();
      for (size_t i = 0; i <= bounds.size(); ++i) {
        std::string le = "le=\"" + format_value(i < bounds.size() ? bounds[i] : INFINITY) + "\"";
        append_sample(out, name_ + "_bucket", label_text(values, le),
                      std::to_string(s.cumulative[i]));
      }
      std::string labels = label_text(values, "");
      append_sample(out, name_ + "_sum", labels, format_value(s.sum));
      append_sample(out, name_ + "_count", labels, std::to_string(s.count));
    } else {
      append_sample(out, name_, label_text(values, ""), format_value(child->value()));
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

template <class Metric>
Family<Metric>& Registry::add(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names, Labels const_labels,
                              std::vector<double> bounds) {
  auto family = std::make_unique<Family<Metric>>(name, help, std::move(label_names),
                                                 std::move(const_labels), std::move(bounds));
  Family<Metric>& ref = *family;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& f : families_) {
    if (f->name() != name) continue;
    if (auto* same = dynamic_cast<Family<Metric>*>(f.get())) return *same;
    assert(false && "metric name registered twice with different types");
    unrendered_.push_back(std::move(family));
    return ref;
  }
  families_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::counter_family(const std::string& name, const std::string& help,
                                          std::vector<std::string> label_names,
                                          Labels const_labels) {
  return add<Counter>(name, help, std::move(label_names), std::move(const_labels), {});
}

Family<Gauge>& Registry::gauge_family(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names, Labels const_labels) {
  return add<Gauge>(name, help, std::move(label_names), std::move(const_labels), {});
}

Family<Histogram>& Registry::histogram_family(const std::string& name, const std::string& help,
                                              std::vector<double> upper_bounds,
                                              std::vector<std::string> label_names,
                                              Labels const_labels) {
  return add<Histogram>(name, help, std::move(label_names), std::move(const_labels),
                        std::move(upper_bounds));
}

Counter& Registry::counter(const std::string& name, const std::string& help, Labels const_labels) {
  return counter_family(name, help, {}, std::move(const_labels)).labels({});
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, Labels const_labels) {
  return gauge_family(name, help, {}, std::move(const_labels)).labels({});
}

Histogram& Registry::histogram(const std::string& name, const std::string& help,
                               std::vector<double> upper_bounds, Labels const_labels) {
  return histogram_family(name, help, std::move(upper_bounds), {}, std::move(const_labels))
      .labels({});
}

std::string Registry::render() const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& f : families_) f->render(out);
  return out;
}

std::vector<double> one_two_five_buckets(double max_value) {
  std::vector<double> out;
  for (double scale = 1; scale <= max_value; scale *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * scale > max_value) return out;
      out.push_back(m * scale);
    }
  }
  return out;
}

namespace {

// vLLM's buckets for the same histograms (vllm/v1/metrics/loggers.py).
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                          0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                          20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                         0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kE2eBuckets = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                         5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                         60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

}  // namespace

ServerMetrics::ServerMetrics(const std::string& model_name, int max_model_len)
    : num_requests_running(registry.gauge("fennec:num_requests_running",
                                          "Number of requests in model execution batches.",
                                          {{"model_name", model_name}})),
      num_requests_waiting(registry.gauge("fennec:num_requests_waiting",
                                          "Number of requests waiting to be processed.",
                                          {{"model_name", model_name}})),
      kv_cache_usage_perc(registry.gauge("fennec:kv_cache_usage_perc",
                                         "KV-cache usage. 1 means 100 percent usage.",
                                         {{"model_name", model_name}})),
      prefix_cache_queries(
          registry.counter("fennec:prefix_cache_queries_total",
                           "Prefix cache queries, in terms of number of queried tokens.",
                           {{"model_name", model_name}})),
      prefix_cache_hits(registry.counter("fennec:prefix_cache_hits_total",
                                         "Prefix cache hits, in terms of number of cached tokens.",
                                         {{"model_name", model_name}})),
      prompt_tokens(registry.counter("fennec:prompt_tokens_total",
                                     "Number of prefill tokens processed.",
                                     {{"model_name", model_name}})),
      generation_tokens(registry.counter("fennec:generation_tokens_total",
                                         "Number of generation tokens processed.",
                                         {{"model_name", model_name}})),
      num_preemptions(registry.counter("fennec:num_preemptions_total",
                                       "Cumulative number of preemptions from the engine.",
                                       {{"model_name", model_name}})),
      time_to_first_token(registry.histogram("fennec:time_to_first_token_seconds",
                                             "Histogram of time to first token in seconds.",
                                             kTtftBuckets, {{"model_name", model_name}})),
      inter_token_latency(registry.histogram("fennec:inter_token_latency_seconds",
                                             "Histogram of inter-token latency in seconds.",
                                             kItlBuckets, {{"model_name", model_name}})),
      e2e_request_latency(registry.histogram("fennec:e2e_request_latency_seconds",
                                             "Histogram of e2e request latency in seconds.",
                                             kE2eBuckets, {{"model_name", model_name}})),
      request_prompt_tokens(
          registry.histogram("fennec:request_prompt_tokens", "Number of prefill tokens processed.",
                             one_two_five_buckets(max_model_len), {{"model_name", model_name}})),
      request_generation_tokens(registry.histogram(
          "fennec:request_generation_tokens", "Number of generation tokens processed.",
          one_two_five_buckets(max_model_len), {{"model_name", model_name}})),
      request_success(registry.counter_family("fennec:request_success_total",
                                              "Count of successfully processed requests.",
                                              {"finished_reason"}, {{"model_name", model_name}})),
      http_requests(registry.counter_family("fennec:http_requests_total",
                                            "Count of HTTP responses by status class.", {"status"},
                                            {{"model_name", model_name}})),
      energy_joules(registry.counter_family(
          "fennec:energy_joules_total",
          "Energy of finished requests in joules, measured (RAPL) or estimated (--device-watts).",
          {"source"}, {{"model_name", model_name}})),
      cost_usd(registry.counter("fennec:cost_usd_total",
                                "Cost of finished requests in USD (energy and machine time).",
                                {{"model_name", model_name}})),
      device_health(registry.gauge_family(
          "fennec:device_health_state",
          "Device health: 0 healthy, 1 suspect, 2 unhealthy, 3 drained.", {"device"},
          {{"model_name", model_name}})),
      device_temperature(registry.gauge_family("fennec:device_temperature_celsius",
                                               "Device temperature in degrees Celsius.",
                                               {"device", "sensor"}, {{"model_name", model_name}})),
      device_power(registry.gauge_family("fennec:device_power_watts", "Device power in watts.",
                                         {"device", "sensor"}, {{"model_name", model_name}})) {
  for (const char* reason : {"stop", "length", "abort", "error"}) request_success.labels({reason});
  for (const char* status : {"2xx", "4xx", "5xx"}) http_requests.labels({status});
}

void ServerMetrics::count_http_response(int status) {
  // One label value per class keeps the series count fixed whatever the handlers answer.
  std::string cls = status >= 100 && status <= 599 ? std::to_string(status / 100) + "xx" : "other";
  http_requests.labels({cls}).inc();
}

}  // namespace fennec::server
