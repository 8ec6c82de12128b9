#include "tokenizer/chat_template.h"

#include "tokenizer/jinja/parser.h"

namespace fennec::tokenizer {

namespace {
constexpr size_t kMaxTemplateBytes = 1u << 20;  // real templates are a few KiB

template <class Json>
Expected<std::string> render_json(const std::shared_ptr<const jinja::Body>& body, const Json& context,
                                  const jinja::RenderLimits& limits) {
  if (!context.is_object()) return make_error("chat template: render context must be a JSON object");
  jinja::Value ctx;
  try {
    ctx = jinja::from_json(context);
  } catch (const std::exception& e) {
    return make_error(std::string("chat template: bad context: ") + e.what());
  }
  auto out = jinja::render_template(*body, ctx, limits);
  if (!out) return make_error("chat template: " + out.error().message);
  return out;
}
}  // namespace

Expected<ChatTemplate> ChatTemplate::parse(const std::string& source) {
  if (source.size() > kMaxTemplateBytes)
    return make_error("chat template: template is " + std::to_string(source.size()) + " bytes, the limit is " +
                      std::to_string(kMaxTemplateBytes));
  auto body = jinja::parse_template(source);
  if (!body) return make_error("chat template: " + body.error().message);
  ChatTemplate t;
  t.body_ = std::make_shared<const jinja::Body>(std::move(*body));
  return t;
}

Expected<std::string> ChatTemplate::render(const nlohmann::json& context) const {
  return render_json(body_, context, limits_);
}

Expected<std::string> ChatTemplate::render(const nlohmann::ordered_json& context) const {
  return render_json(body_, context, limits_);
}

Expected<std::string> ChatTemplate::apply(const nlohmann::json& messages, bool add_generation_prompt,
                                          const std::string& bos_token, const std::string& eos_token,
                                          const nlohmann::json& tools) const {
  nlohmann::json ctx = nlohmann::json::object();
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = add_generation_prompt;
  ctx["bos_token"] = bos_token;
  ctx["eos_token"] = eos_token;
  ctx["tools"] = tools;  // transformers passes tools=None when there are none
  return render(ctx);
}

}  // namespace fennec::tokenizer
