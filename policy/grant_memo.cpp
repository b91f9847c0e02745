#include "policy/grant_memo.h"

#include <limits>
#include <nlohmann/json.hpp>

#include "policy/parser.h"

namespace sshring::policy {

UnixSeconds recheck_time(const CheckedGrant& c, UnixSeconds now) noexcept {
  constexpr UnixSeconds kNever = std::numeric_limits<UnixSeconds>::max();
  switch (c.status) {
    case GrantStatus::kRejected:
      // Every other rejection (signature, key, rule fit) is about the text and the policy alone.
      return c.reject_reason == "future_time" ? now : kNever;
    case GrantStatus::kPending:
      return c.pending_until;
    case GrantStatus::kActive:
      return c.terms.effective_expiry();
    case GrantStatus::kExpired:
    case GrantStatus::kRevoked:
    case GrantStatus::kDenied:
      return kNever;
  }
  return now;
}

GrantMemo::Result GrantMemo::build(const std::string& policy_text, const std::string& policy_origin,
                                   const std::vector<GrantText>& grant_texts, UnixSeconds now,
                                   SignatureCache* signatures, DecisionLedger* ledger) {
  Result out;
  const bool same_policy = policy_ && policy_text == policy_text_ && policy_origin == policy_origin_;
  if (!same_policy) {
    auto parsed = std::make_shared<const Policy>(parse_policy(policy_text, policy_origin));
    policy_ = std::move(parsed);
    policy_text_ = policy_text;
    policy_origin_ = policy_origin;
    for (auto& [text, e] : entries_) e.checked.reset();  // checked against another policy
  }
  out.policy = policy_;
  const uint64_t build = ++builds_;

  // Find or parse each text; collect the ones whose check must be (re)done.
  std::vector<Entry*> slots;
  slots.reserve(grant_texts.size());
  std::vector<const SignedGrant*> to_check;
  std::vector<Entry*> to_check_slots;
  for (const auto& text : grant_texts) {
    if (!text) continue;
    auto [it, fresh] = entries_.try_emplace(text.get());
    Entry& e = it->second;
    if (fresh) {
      e.text = text;
      try {
        e.parsed = signed_grant_from_json(nlohmann::json::parse(*text));
      } catch (const std::exception& ex) {
        out.unreadable.emplace_back(ex.what());
      }
    }
    e.seen = build;
    if (!e.parsed) continue;
    slots.push_back(&e);
    const uint64_t lv = ledger ? ledger->version(e.parsed->id()) : 0;
    if (e.checked && e.checked_at <= now && now < e.recheck_at && e.ledger_version == lv) {
      ++out.reused;
      continue;
    }
    e.restored.reset();
    if (lv != 0) {
      SignedGrant g = *e.parsed;
      if (ledger->restore(g) > 0) {
        out.restored.push_back(g.id());
        e.restored = std::move(g);
      }
    }
    to_check.push_back(e.restored ? &*e.restored : &*e.parsed);
    to_check_slots.push_back(&e);
  }

  // Check what is new or due (on every core when there are many: the first build).
  auto checked = check_grants(*policy_, to_check, now, signatures);
  for (size_t i = 0; i < checked.size(); ++i) {
    Entry& e = *to_check_slots[i];
    if (ledger) {
      ledger->remember(checked[i]);
      e.ledger_version = ledger->version(checked[i].object.id());
    }
    e.recheck_at = recheck_time(checked[i], now);
    e.checked_at = now;
    e.checked = std::make_shared<const CheckedGrant>(std::move(checked[i]));
  }
  out.rechecked = to_check.size();
  // After a check of everything (first build, new policy) the signatures of grants gone since the
  // last one can go; between those, reused checks touch no signature, so none may be dropped.
  if (!same_policy && signatures) signatures->end_generation();

  out.checked.reserve(slots.size());
  for (Entry* e : slots) out.checked.push_back(e->checked);
  std::erase_if(entries_, [&](const auto& kv) { return kv.second.seen != build; });
  return out;
}

}  // namespace sshring::policy
