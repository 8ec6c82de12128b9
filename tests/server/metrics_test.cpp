#include "server/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fennec::server {
namespace {

// --- A tiny reader of the text exposition format, strict enough to catch malformed output ----

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct ParsedFamily {
  std::string name;
  std::string help;
  std::string type;
  std::vector<Sample> samples;
};

std::string unescape(const std::string& s, bool allow_quote) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    char next = i + 1 < s.size() ? s[++i] : '?';
    if (next == '\\') {
      out += '\\';
    } else if (next == 'n') {
      out += '\n';
    } else if (next == '"' && allow_quote) {
      out += '"';
    } else {
      ADD_FAILURE() << "bad escape \\" << next << " in " << s;
    }
  }
  return out;
}

double parse_value(const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  EXPECT_EQ(*end, '\0') << "bad value '" << text << "'";
  return v;
}

Sample parse_sample(const std::string& line) {
  Sample s;
  size_t i = line.find_first_of("{ ");
  EXPECT_NE(i, std::string::npos) << line;
  s.name = line.substr(0, i);
  if (line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      size_t eq = line.find("=\"", i);
      EXPECT_NE(eq, std::string::npos) << line;
      if (eq == std::string::npos) return s;
      std::string key = line.substr(i, eq - i);
      size_t j = eq + 2;
      std::string raw;
      while (j < line.size() && line[j] != '"') {
        if (line[j] == '\\' && j + 1 < line.size()) raw += line[j++];
        raw += line[j++];
      }
      EXPECT_EQ(s.labels.count(key), 0u) << "label repeated in " << line;
      s.labels[key] = unescape(raw, true);
      i = j + 1;
      if (i < line.size() && line[i] == ',') ++i;
    }
    EXPECT_LT(i, line.size()) << "unterminated labels: " << line;
    ++i;
  }
  EXPECT_EQ(line[i], ' ') << line;
  s.value = parse_value(line.substr(i + 1));
  return s;
}

bool sample_belongs(const ParsedFamily& f, const std::string& name) {
  if (f.type != "histogram") return name == f.name;
  return name == f.name + "_bucket" || name == f.name + "_sum" || name == f.name + "_count";
}

std::vector<ParsedFamily> parse_exposition(const std::string& text) {
  std::vector<ParsedFamily> families;
  EXPECT_TRUE(text.empty() || text.back() == '\n');
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    EXPECT_FALSE(line.empty()) << "empty line in exposition";
    if (line.rfind("# HELP ", 0) == 0) {
      size_t space = line.find(' ', 7);
      ParsedFamily f;
      f.name = line.substr(7, space - 7);
      f.help = space == std::string::npos ? "" : unescape(line.substr(space + 1), false);
      for (const ParsedFamily& g : families) EXPECT_NE(g.name, f.name) << "family repeated";
      families.push_back(f);
    } else if (line.rfind("# TYPE ", 0) == 0) {
      EXPECT_FALSE(families.empty()) << "TYPE before HELP: " << line;
      if (families.empty()) continue;
      ParsedFamily& f = families.back();
      size_t space = line.find(' ', 7);
      EXPECT_EQ(line.substr(7, space - 7), f.name);
      EXPECT_TRUE(f.samples.empty()) << "TYPE after samples: " << line;
      f.type = line.substr(space + 1);
      EXPECT_TRUE(f.type == "counter" || f.type == "gauge" || f.type == "histogram") << line;
    } else {
      EXPECT_NE(line[0], '#') << line;
      EXPECT_FALSE(families.empty()) << "sample before any family: " << line;
      if (families.empty()) continue;
      Sample s = parse_sample(line);
      EXPECT_TRUE(sample_belongs(families.back(), s.name))
          << s.name << " under family " << families.back().name;
      families.back().samples.push_back(std::move(s));
    }
  }
  return families;
}

const ParsedFamily* find_family(const std::vector<ParsedFamily>& fs, const std::string& name) {
  for (const ParsedFamily& f : fs) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

// Checks each histogram series: le ascending, counts non-decreasing, +Inf last and == _count.
// Returns the number of series checked.
int check_histogram(const ParsedFamily& f) {
  std::map<std::map<std::string, std::string>, std::vector<const Sample*>> buckets;
  std::map<std::map<std::string, std::string>, double> counts;
  for (const Sample& s : f.samples) {
    std::map<std::string, std::string> key = s.labels;
    if (s.name == f.name + "_bucket") {
      EXPECT_EQ(key.count("le"), 1u);
      key.erase("le");
      buckets[key].push_back(&s);
    } else if (s.name == f.name + "_count") {
      counts[key] = s.value;
    }
  }
  EXPECT_EQ(buckets.size(), counts.size()) << f.name;
  for (const auto& [key, series] : buckets) {
    double prev_le = -INFINITY;
    double prev_count = 0;
    for (const Sample* s : series) {
      double le = parse_value(s->labels.at("le"));
      EXPECT_GT(le, prev_le) << f.name;
      EXPECT_GE(s->value, prev_count) << f.name << " le=" << s->labels.at("le");
      prev_le = le;
      prev_count = s->value;
    }
    EXPECT_EQ(series.back()->labels.at("le"), "+Inf") << f.name;
    EXPECT_EQ(series.back()->value, counts[key]) << f.name;
  }
  return static_cast<int>(buckets.size());
}

// --- Registry ------------------------------------------------------------------------------

TEST(MetricsRegistry, RendersFamiliesInRegistrationOrder) {
  Registry reg;
  Gauge& g = reg.gauge("zeta_gauge", "Last registered name first.");
  Counter& c = reg.counter("alpha_total", "A counter.");
  Histogram& h = reg.histogram("mid_seconds", "A histogram.", {0.1, 1, 10});
  g.set(0.5);
  c.inc();
  c.inc(2.5);
  h.observe(0.05);
  h.observe(0.1);  // le is inclusive
  h.observe(5);
  h.observe(100);
  std::vector<ParsedFamily> fs = parse_exposition(reg.render());
  ASSERT_EQ(fs.size(), 3u);
  EXPECT_EQ(fs[0].name, "zeta_gauge");
  EXPECT_EQ(fs[0].type, "gauge");
  EXPECT_EQ(fs[0].samples[0].value, 0.5);
  EXPECT_EQ(fs[1].name, "alpha_total");
  EXPECT_EQ(fs[1].type, "counter");
  EXPECT_EQ(fs[1].samples[0].value, 3.5);
  EXPECT_EQ(fs[2].type, "histogram");
  const std::vector<Sample>& hs = fs[2].samples;
  ASSERT_EQ(hs.size(), 6u);  // 3 bounds + Inf, sum, count
  EXPECT_EQ(hs[0].labels.at("le"), "0.1");
  EXPECT_EQ(hs[0].value, 2);
  EXPECT_EQ(hs[1].labels.at("le"), "1.0");
  EXPECT_EQ(hs[1].value, 2);
  EXPECT_EQ(hs[2].value, 3);
  EXPECT_EQ(hs[3].value, 4);
  EXPECT_EQ(hs[4].name, "mid_seconds_sum");
  EXPECT_DOUBLE_EQ(hs[4].value, 105.15);
  EXPECT_EQ(hs[5].name, "mid_seconds_count");
  EXPECT_EQ(hs[5].value, 4);
  EXPECT_EQ(check_histogram(fs[2]), 1);
}

TEST(MetricsRegistry, ExactTextForOneCounter) {
  Registry reg;
  reg.counter("fennec:x_total", "Help.", {{"model_name", "m"}}).inc(3);
  EXPECT_EQ(reg.render(),
            "# HELP fennec:x_total Help.\n"
            "# TYPE fennec:x_total counter\n"
            "fennec:x_total{model_name=\"m\"} 3.0\n");
}

TEST(MetricsRegistry, EscapesLabelValuesAndHelp) {
  Registry reg;
  const std::string nasty = "a\"b\\c\nd {x=\"y\"}";
  reg.gauge("g", "line one\nback\\slash \"quotes\" stay", {{"model_name", nasty}}).set(1);
  std::string text = reg.render();
  EXPECT_NE(text.find("# HELP g line one\\nback\\\\slash \"quotes\" stay\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("model_name=\"a\\\"b\\\\c\\nd {x=\\\"y\\\"}\""), std::string::npos) << text;
  std::vector<ParsedFamily> fs = parse_exposition(text);
  ASSERT_EQ(fs.size(), 1u);
  EXPECT_EQ(fs[0].help, "line one\nback\\slash \"quotes\" stay");
  EXPECT_EQ(fs[0].samples[0].labels.at("model_name"), nasty);
}

TEST(MetricsRegistry, LabelledChildrenAndConstLabels) {
  Registry reg;
  Family<Counter>& f =
      reg.counter_family("req_total", "Requests.", {"reason", "kind"}, {{"model_name", "m"}});
  f.labels({"stop", "chat"}).inc();
  f.labels({"length", "chat"}).inc(2);
  f.labels({"stop", "chat"}).inc();
  EXPECT_EQ(&f.labels({"stop", "chat"}), &f.labels({"stop", "chat"}));  // stable address
  Family<Histogram>& hf = reg.histogram_family("lat_seconds", "Latency.", {1, 2}, {"route"});
  hf.labels({"/a"}).observe(1.5);
  hf.labels({"/b"}).observe(3);
  std::vector<ParsedFamily> fs = parse_exposition(reg.render());
  ASSERT_EQ(fs.size(), 2u);
  ASSERT_EQ(fs[0].samples.size(), 2u);  // ordered by label values: length < stop
  EXPECT_EQ(fs[0].samples[0].labels.at("reason"), "length");
  EXPECT_EQ(fs[0].samples[0].labels.at("kind"), "chat");
  EXPECT_EQ(fs[0].samples[0].labels.at("model_name"), "m");
  EXPECT_EQ(fs[0].samples[0].value, 2);
  EXPECT_EQ(fs[0].samples[1].value, 2);
  EXPECT_EQ(check_histogram(fs[1]), 2);
}

TEST(MetricsRegistry, EmptyLabelledFamilyRendersHeaderOnly) {
  Registry reg;
  reg.counter_family("none_total", "Nothing yet.", {"x"});
  std::vector<ParsedFamily> fs = parse_exposition(reg.render());
  ASSERT_EQ(fs.size(), 1u);
  EXPECT_EQ(fs[0].type, "counter");
  EXPECT_TRUE(fs[0].samples.empty());
}

TEST(MetricsRegistry, SameNameTwiceIsTheSameFamily) {
  Registry reg;
  Counter& a = reg.counter("c_total", "C.");
  Counter& b = reg.counter("c_total", "C.");
  EXPECT_EQ(&a, &b);
  a.inc();
  EXPECT_EQ(parse_exposition(reg.render()).size(), 1u);
}

TEST(MetricsRegistry, ValueSemantics) {
  Counter c;
  c.inc(-5);
  c.inc(NAN);
  EXPECT_EQ(c.value(), 0);  // counters never go down
  Gauge g;
  g.inc(3);
  g.dec();
  EXPECT_EQ(g.value(), 2);
  g.set(-1.25);
  EXPECT_EQ(g.value(), -1.25);
  Histogram h({10, 1, 1, INFINITY});  // sorted, deduplicated, +Inf implied
  EXPECT_EQ(h.upper_bounds(), (std::vector<double>{1, 10}));
  h.observe(NAN);
  EXPECT_EQ(h.snapshot().count, 0u);
  h.observe(-3);  // below every bound: first bucket
  h.observe(INFINITY);
  Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{1, 1, 2}));
  EXPECT_EQ(s.count, 2u);
}

TEST(MetricsRegistry, SpecialValuesUsePrometheusSpelling) {
  Registry reg;
  reg.gauge("inf_gauge", "I.").set(INFINITY);
  reg.gauge("neg_gauge", "N.").set(-INFINITY);
  reg.gauge("nan_gauge", "N.").set(NAN);
  reg.gauge("small_gauge", "S.").set(1e-7);
  std::string text = reg.render();
  EXPECT_NE(text.find("inf_gauge +Inf\n"), std::string::npos) << text;
  EXPECT_NE(text.find("neg_gauge -Inf\n"), std::string::npos) << text;
  EXPECT_NE(text.find("nan_gauge NaN\n"), std::string::npos) << text;
  EXPECT_NE(text.find("small_gauge 1e-07\n"), std::string::npos) << text;
  parse_exposition(text);
}

TEST(MetricsRegistry, ConcurrentUpdatesSumExactly) {
  Registry reg;
  Counter& c = reg.counter("c_total", "C.");
  Gauge& g = reg.gauge("g", "G.");
  Histogram& h = reg.histogram("h", "H.", {1, 2, 4, 8});
  Family<Counter>& f = reg.counter_family("f_total", "F.", {"t"});
  constexpr int kThreads = 8;
  constexpr int kIters = 20000;
  std::atomic<bool> done{false};
  // A scraper renders while the writers run: every snapshot must be well-formed.
  std::thread scraper([&] {
    int renders = 0;
    while (!done.load() || renders == 0) {
      std::vector<ParsedFamily> fs = parse_exposition(reg.render());
      if (const ParsedFamily* hist = find_family(fs, "h")) check_histogram(*hist);
      ++renders;
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      Counter& mine = f.labels({std::to_string(t % 4)});  // children created concurrently
      for (int i = 0; i < kIters; ++i) {
        c.inc();
        g.inc(2);
        g.dec();
        h.observe(i % 10);
        mine.inc();
      }
    });
  }
  for (std::thread& w : writers) w.join();
  done = true;
  scraper.join();
  EXPECT_EQ(c.value(), kThreads * kIters);
  EXPECT_EQ(g.value(), kThreads * kIters);
  Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.count, static_cast<uint64_t>(kThreads * kIters));
  EXPECT_EQ(s.sum, kThreads * (kIters / 10) * 45.0);  // 0+1+...+9 per ten; exact in doubles
  // 0,1 -> le 1; 2 -> le 2; 3,4 -> le 4; 5..8 -> le 8; 9 -> +Inf (per ten observations)
  uint64_t per_ten = kThreads * kIters / 10;
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2 * per_ten, 3 * per_ten, 5 * per_ten, 9 * per_ten,
                                                 10 * per_ten}));
  std::vector<ParsedFamily> fs = parse_exposition(reg.render());
  const ParsedFamily* ff = find_family(fs, "f_total");
  ASSERT_NE(ff, nullptr);
  ASSERT_EQ(ff->samples.size(), 4u);
  for (const Sample& sample : ff->samples) EXPECT_EQ(sample.value, 2 * kIters);
}

TEST(MetricsRegistry, OneTwoFiveBuckets) {
  EXPECT_EQ(one_two_five_buckets(100), (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
  EXPECT_EQ(one_two_five_buckets(8192),
            (std::vector<double>{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}));
  EXPECT_EQ(one_two_five_buckets(1), std::vector<double>{1});
  EXPECT_TRUE(one_two_five_buckets(0).empty());
}

// --- ServerMetrics -------------------------------------------------------------------------

TEST(MetricsServer, NamesTypesAndModelLabel) {
  ServerMetrics m("org/Model \"v2\"", 4096);
  m.num_requests_running.set(3);
  m.num_requests_waiting.set(1);
  m.kv_cache_usage_perc.set(0.25);
  m.prefix_cache_queries.inc(100);
  m.prefix_cache_hits.inc(40);
  m.prompt_tokens.inc(100);
  m.generation_tokens.inc(7);
  m.num_preemptions.inc();
  m.time_to_first_token.observe(0.12);
  m.inter_token_latency.observe(0.02);
  m.e2e_request_latency.observe(1.3);
  m.request_prompt_tokens.observe(100);
  m.request_generation_tokens.observe(7);
  m.request_success.labels({"stop"}).inc();
  m.count_http_response(200);
  m.count_http_response(404);
  m.count_http_response(422);
  m.count_http_response(999);
  m.energy_joules.labels({"estimated"}).inc(1.5);
  m.cost_usd.inc(0.01);
  m.device_health.labels({"mem:mc0"}).set(1);
  m.device_temperature.labels({"cpu", "k10temp/Tctl"}).set(45);
  m.device_power.labels({"gpu:0", "power"}).set(250);

  std::vector<ParsedFamily> fs = parse_exposition(m.render());
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"fennec:num_requests_running", "gauge"},
      {"fennec:num_requests_waiting", "gauge"},
      {"fennec:kv_cache_usage_perc", "gauge"},
      {"fennec:prefix_cache_queries_total", "counter"},
      {"fennec:prefix_cache_hits_total", "counter"},
      {"fennec:prompt_tokens_total", "counter"},
      {"fennec:generation_tokens_total", "counter"},
      {"fennec:num_preemptions_total", "counter"},
      {"fennec:time_to_first_token_seconds", "histogram"},
      {"fennec:inter_token_latency_seconds", "histogram"},
      {"fennec:e2e_request_latency_seconds", "histogram"},
      {"fennec:request_prompt_tokens", "histogram"},
      {"fennec:request_generation_tokens", "histogram"},
      {"fennec:request_success_total", "counter"},
      {"fennec:http_requests_total", "counter"},
      {"fennec:energy_joules_total", "counter"},
      {"fennec:cost_usd_total", "counter"},
      {"fennec:device_health_state", "gauge"},
      {"fennec:device_temperature_celsius", "gauge"},
      {"fennec:device_power_watts", "gauge"},
  };
  ASSERT_EQ(fs.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(fs[i].name, expected[i].first);
    EXPECT_EQ(fs[i].type, expected[i].second) << fs[i].name;
    EXPECT_FALSE(fs[i].help.empty()) << fs[i].name;
    EXPECT_FALSE(fs[i].samples.empty()) << fs[i].name;
    for (const Sample& s : fs[i].samples) {
      EXPECT_EQ(s.labels.at("model_name"), "org/Model \"v2\"") << s.name;
    }
    if (fs[i].type == "histogram") EXPECT_EQ(check_histogram(fs[i]), 1) << fs[i].name;
  }
  EXPECT_EQ(fs[0].samples[0].value, 3);
  EXPECT_EQ(fs[2].samples[0].value, 0.25);
  EXPECT_EQ(fs[3].samples[0].value, 100);
  EXPECT_EQ(fs[4].samples[0].value, 40);

  // Every finished_reason is there from the start, so rate() works before the first abort.
  std::map<std::string, double> reasons;
  for (const Sample& s : find_family(fs, "fennec:request_success_total")->samples) {
    reasons[s.labels.at("finished_reason")] = s.value;
  }
  EXPECT_EQ(reasons, (std::map<std::string, double>{
                         {"abort", 0}, {"error", 0}, {"length", 0}, {"stop", 1}}));

  std::map<std::string, double> statuses;
  for (const Sample& s : find_family(fs, "fennec:http_requests_total")->samples) {
    statuses[s.labels.at("status")] = s.value;
  }
  EXPECT_EQ(statuses,
            (std::map<std::string, double>{{"2xx", 1}, {"4xx", 2}, {"5xx", 0}, {"other", 1}}));

  // Token histograms stop at the context length, as vLLM's do.
  const ParsedFamily* prompt = find_family(fs, "fennec:request_prompt_tokens");
  std::vector<std::string> les;
  for (const Sample& s : prompt->samples) {
    if (s.name == prompt->name + "_bucket") les.push_back(s.labels.at("le"));
  }
  EXPECT_EQ(les.front(), "1.0");
  EXPECT_EQ(les[les.size() - 2], "2000.0");
  EXPECT_EQ(les.back(), "+Inf");
}

}  // namespace
}  // namespace fennec::server
