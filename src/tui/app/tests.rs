//! The app's update function with plain values: keys, engine events and slash commands in,
//! state and effects out.

use super::*;
use crate::cache::PolicyKind;
use crate::tui::store::SavedChat;

fn app() -> App {
    let mut a = App::new(CacheConfig::default(), SamplingParams::greedy(), 256);
    a.update(Msg::Engine(Event::Ready {
        model: "smol".into(),
        device: "cpu".into(),
        layers: 4,
        kv_heads: 2,
        context: 8192,
    }));
    a
}

fn typed(a: &mut App, s: &str) {
    for c in s.chars() {
        a.update(Msg::Action(Action::Insert(c)));
    }
}

#[test]
fn submitting_sends_the_conversation_and_saves() {
    let mut a = app();
    typed(&mut a, "hello");
    let fx = a.update(Msg::Action(Action::Submit));
    assert_eq!(a.messages, vec![Message::user("hello")]);
    assert!(a.input.is_empty());
    assert_eq!(
        fx,
        vec![
            Effect::Save,
            Effect::Engine(Command::Reply(vec![Message::user("hello")]))
        ]
    );
    // A second message while answering is refused.
    typed(&mut a, "more");
    assert!(a.update(Msg::Action(Action::Submit)).is_empty());
    assert!(a.notice.as_ref().is_some_and(|n| n.1));
}

#[test]
fn tokens_stream_into_the_answer_and_finish_as_a_message() {
    let mut a = app();
    typed(&mut a, "hi");
    a.update(Msg::Action(Action::Submit));
    for piece in ["Hel", "lo", "!"] {
        a.update(Msg::Engine(Event::Token {
            token: piece.into(),
            text: piece.into(),
        }));
    }
    assert_eq!(a.streaming.as_deref(), Some("Hello!"));
    let fx = a.update(Msg::Engine(Event::Finished {
        text: "Hello!".into(),
        stats: TurnStats::default(),
        cancelled: false,
    }));
    assert_eq!(fx, vec![Effect::Save]);
    assert_eq!(a.messages.last(), Some(&Message::assistant("Hello!")));
    assert_eq!(a.busy, Busy::Idle);
    assert_eq!(a.tokens.len(), 3);
}

#[test]
fn esc_cancels_only_while_generating() {
    let mut a = app();
    assert!(a.update(Msg::Action(Action::Stop)).is_empty());
    typed(&mut a, "hi");
    a.update(Msg::Action(Action::Submit));
    assert_eq!(a.update(Msg::Action(Action::Stop)), vec![Effect::Cancel]);
}

#[test]
fn editing_the_cursor_handles_multibyte_text() {
    let mut a = app();
    typed(&mut a, "héllo");
    a.update(Msg::Action(Action::Left));
    a.update(Msg::Action(Action::Left));
    a.update(Msg::Action(Action::Backspace));
    a.update(Msg::Action(Action::Backspace));
    assert_eq!(a.input, "hlo");
    a.update(Msg::Action(Action::Home));
    a.update(Msg::Action(Action::Delete));
    assert_eq!(a.input, "lo");
    a.update(Msg::Action(Action::Newline));
    assert_eq!(a.input, "\nlo");
}

#[test]
fn slash_set_changes_sampling_and_rejects_bad_values() {
    let mut a = app();
    typed(&mut a, "/set temp 0.7");
    let fx = a.update(Msg::Action(Action::Submit));
    assert_eq!(a.sampling.temp, 0.7);
    assert!(matches!(
        fx.as_slice(),
        [Effect::Engine(Command::SetSampling(_))]
    ));
    typed(&mut a, "/set temp hot");
    assert!(a.update(Msg::Action(Action::Submit)).is_empty());
    let (text, err) = a.notice.clone().unwrap();
    assert!(err && text.contains("`hot` is not a number"), "{text}");
    typed(&mut a, "/set top-p 2");
    assert!(a.update(Msg::Action(Action::Submit)).is_empty());
    assert!(a.notice.as_ref().unwrap().1);
    typed(&mut a, "/frobnicate");
    a.update(Msg::Action(Action::Submit));
    assert!(a
        .notice
        .as_ref()
        .unwrap()
        .0
        .contains("unknown command `/frobnicate`"));
    typed(&mut a, "/set colour red");
    a.update(Msg::Action(Action::Submit));
    assert!(a
        .notice
        .as_ref()
        .unwrap()
        .0
        .contains("unknown setting `colour`"));
}

#[test]
fn slash_set_policy_says_when_it_applies() {
    let mut a = app();
    typed(&mut a, "/set policy h2o");
    let fx = a.update(Msg::Action(Action::Submit));
    assert_eq!(a.cache.policy, PolicyKind::H2o);
    assert!(a
        .notice
        .as_ref()
        .unwrap()
        .0
        .contains("next new conversation"));
    assert!(matches!(
        fx.as_slice(),
        [Effect::Engine(Command::SetCache { now: false, .. })]
    ));
    // With a conversation: applies now, prefilling again.
    a.messages.push(Message::user("hi"));
    a.messages.push(Message::assistant("hello"));
    typed(&mut a, "/set budget 300");
    let fx = a.update(Msg::Action(Action::Submit));
    assert!(a.notice.as_ref().unwrap().0.contains("applies now"));
    assert!(matches!(
        fx.as_slice(),
        [Effect::Engine(Command::SetCache { now: true, .. })]
    ));
    assert!(matches!(a.busy, Busy::Prefill { .. }));
    // Invalid settings are refused with the reason.
    a.busy = Busy::Idle;
    typed(&mut a, "/set policy lru");
    assert!(a.update(Msg::Action(Action::Submit)).is_empty());
    assert!(a
        .notice
        .as_ref()
        .unwrap()
        .0
        .contains("unknown policy `lru`"));
    typed(&mut a, "/set budget 3");
    assert!(a.update(Msg::Action(Action::Submit)).is_empty());
    assert!(a.notice.as_ref().unwrap().1);
}

#[test]
fn slash_set_recent_sets_the_share_and_refuses_what_is_out_of_range() {
    let mut a = app();
    // Types `line`, submits it: the effects and the notice shown.
    let submit = |a: &mut App, line: &str| {
        typed(a, line);
        let fx = a.update(Msg::Action(Action::Submit));
        (fx, a.notice.clone().unwrap_or_default())
    };
    assert_eq!(a.cache.protected(), 450);
    let (fx, _) = submit(&mut a, "/set recent 40");
    assert_eq!((a.cache.recent, a.cache.protected()), (Some(40), 240));
    assert!(matches!(
        fx.as_slice(),
        [Effect::Engine(Command::SetCache { now: false, cache })] if cache.recent == Some(40)
    ));
    for bad in ["101", "-5", "half"] {
        let (fx, (text, error)) = submit(&mut a, &format!("/set recent {bad}"));
        assert!(
            fx.is_empty() && error && text.contains("recent"),
            "{bad}: {text}"
        );
        assert_eq!(a.cache.recent, Some(40), "{bad}");
    }
    // The share stays when the policy changes; `/show` reports it.
    submit(&mut a, "/set policy h2o");
    assert_eq!((a.cache.recent, a.cache.protected()), (Some(40), 240));
    let (_, (text, _)) = submit(&mut a, "/show");
    assert!(
        text.contains("recent 40% (the last 240 protected) history 100% half-life 512"),
        "{text}"
    );
}

#[test]
fn slash_set_history_and_half_life_reach_the_engine_and_refuse_what_is_out_of_range() {
    let mut a = app();
    let submit = |a: &mut App, line: &str| {
        typed(a, line);
        let fx = a.update(Msg::Action(Action::Submit));
        (fx, a.notice.clone().unwrap_or_default())
    };
    let (fx, _) = submit(&mut a, "/set history 0");
    assert!(matches!(
        fx.as_slice(),
        [Effect::Engine(Command::SetCache { now: false, cache })] if cache.history == 0
    ));
    let (fx, _) = submit(&mut a, "/set half-life 64");
    assert!(matches!(
        fx.as_slice(),
        [Effect::Engine(Command::SetCache { now: false, cache })]
            if cache.half_life == 64 && cache.history == 0
    ));
    for (bad, name) in [("history 1001", "history"), ("half-life soon", "half-life")] {
        let (fx, (text, error)) = submit(&mut a, &format!("/set {bad}"));
        assert!(
            fx.is_empty() && error && text.contains(name),
            "{bad}: {text}"
        );
    }
    assert_eq!((a.cache.history, a.cache.half_life), (0, 64));
    let (_, (text, _)) = submit(&mut a, "/show");
    assert!(text.contains("history 0% half-life 64"), "{text}");
}

#[test]
fn regenerate_and_edit_rewind_the_conversation() {
    let mut a = app();
    a.messages = vec![Message::user("q1"), Message::assistant("a1")];
    let fx = a.update(Msg::Action(Action::Regenerate));
    assert_eq!(
        fx,
        vec![Effect::Engine(Command::Reply(vec![Message::user("q1")]))]
    );
    a.busy = Busy::Idle;
    a.messages.push(Message::assistant("a1'"));
    a.update(Msg::Action(Action::EditLast));
    assert!(a.messages.is_empty());
    assert_eq!(a.input, "q1");
}

#[test]
fn panels_cycle_and_focus_wraps() {
    let mut a = app();
    assert_eq!(a.panel, Some(Panel::Retention));
    a.update(Msg::Action(Action::CyclePanel));
    assert_eq!(a.panel, Some(Panel::Cache));
    a.update(Msg::Action(Action::CyclePanel));
    a.update(Msg::Action(Action::CyclePanel));
    assert_eq!(a.panel, Some(Panel::Inspector));
    a.update(Msg::Action(Action::CyclePanel));
    assert_eq!(a.panel, None);
    let fx = a.update(Msg::Action(Action::FocusNext { head: false }));
    assert_eq!(fx, vec![Effect::Engine(Command::Focus(Some((0, 0))))]);
    a.update(Msg::Action(Action::FocusPrev { head: true }));
    assert_eq!(a.focus, Some((0, 1)));
}

#[test]
fn step_mode_pauses_and_advances() {
    let mut a = app();
    assert!(a.update(Msg::Action(Action::StepOne)).is_empty());
    assert_eq!(
        a.update(Msg::Action(Action::TogglePause)),
        vec![Effect::Pause(true)]
    );
    assert_eq!(
        a.update(Msg::Action(Action::StepOne)),
        vec![Effect::Advance]
    );
    assert_eq!(
        a.update(Msg::Action(Action::TogglePause)),
        vec![Effect::Pause(false)]
    );
}

#[test]
fn quit_cancels_a_running_answer_first() {
    let mut a = app();
    a.busy = Busy::Generating;
    assert_eq!(
        a.update(Msg::Action(Action::Quit)),
        vec![Effect::Cancel, Effect::Quit]
    );
    assert!(a.quit);
}

#[test]
fn inspector_commands_choose_a_token_and_export_the_trace() {
    let mut a = app();
    a.update(Msg::Engine(Event::Step(Box::new(StepInfo {
        seen: 50,
        window_from: 40,
        protected_from: 30,
        ..StepInfo::default()
    }))));
    // Opening the inspector picks the newest token outside the protected span.
    a.panel = Some(Panel::Attention);
    assert_eq!(
        a.update(Msg::Action(Action::CyclePanel)),
        vec![Effect::Engine(Command::Inspect(Some(29)))]
    );
    assert_eq!(a.panel, Some(Panel::Inspector));
    typed(&mut a, "/inspect 7");
    assert_eq!(
        a.update(Msg::Action(Action::Submit)),
        vec![Effect::Engine(Command::Inspect(Some(7)))]
    );
    typed(&mut a, "/inspect 50");
    assert!(a.update(Msg::Action(Action::Submit)).is_empty());
    assert!(a
        .notice
        .as_ref()
        .is_some_and(|(t, err)| *err && t.contains("50 tokens")));
    assert_eq!(a.inspect, Some(7));
    assert_eq!(
        a.update(Msg::Action(Action::Inspect(-10))),
        vec![Effect::Engine(Command::Inspect(Some(0)))]
    );
    typed(&mut a, "/trace t.jsonl");
    assert_eq!(
        a.update(Msg::Action(Action::Submit)),
        vec![Effect::Engine(Command::ExportTrace("t.jsonl".into()))]
    );
    a.update(Msg::Engine(Event::Exported("t.jsonl".into())));
    assert!(a
        .notice
        .as_ref()
        .is_some_and(|(t, _)| t.contains("t.jsonl")));
    // A new chat forgets the choice.
    a.update(Msg::Action(Action::NewChat));
    assert_eq!(a.inspect, None);
}

#[test]
fn the_chat_list_opens_deletes_and_renames() {
    let mut a = app();
    typed(&mut a, "/chats");
    assert_eq!(
        a.update(Msg::Action(Action::Submit)),
        vec![Effect::ListChats]
    );
    let entry = |id: &str, current: bool| ChatEntry {
        id: id.into(),
        title: format!("chat {id}"),
        messages: 2,
        current,
        damaged: None,
    };
    a.update(Msg::Chats(vec![entry("b", false), entry("a", true)]));
    // The list opens on the chat on screen.
    assert_eq!(a.chats.as_ref().unwrap().selected, 1);
    // It cannot delete the open chat; it can another.
    assert!(a.update(Msg::Action(Action::Delete)).is_empty());
    a.update(Msg::Action(Action::ScrollUp(1)));
    assert_eq!(
        a.update(Msg::Action(Action::Delete)),
        vec![Effect::DeleteChat("b".into())]
    );
    assert_eq!(
        a.update(Msg::Action(Action::Submit)),
        vec![Effect::Save, Effect::OpenChat("b".into())]
    );
    // An opened chat runs under the settings it saved (H2O, budget 300, window 20), set
    // before the cache is reset.
    let saved = |budget: usize| {
        let cache = CacheConfig {
            policy: PolicyKind::H2o,
            budget,
            window: Some(20),
            ..CacheConfig::default()
        };
        let mut c = SavedChat::new("b", 1, "m", &cache, &[Message::user("old question")]);
        c.budget = budget;
        Box::new(c)
    };
    let fx = a.update(Msg::Opened(saved(300)));
    assert!(a.chats.is_none());
    assert_eq!(a.messages, vec![Message::user("old question")]);
    let [Effect::Engine(Command::SetCache { cache, now: false }), Effect::Engine(Command::Reset), ..] =
        fx.as_slice()
    else {
        panic!("{fx:?}");
    };
    assert_eq!(
        (cache.policy, cache.budget, cache.window()),
        (PolicyKind::H2o, 300, 20)
    );
    assert_eq!(a.cache, *cache);
    // A saved budget below its window is refused: the current settings stay, and it says so.
    let fx = a.update(Msg::Opened(saved(10)));
    assert_eq!(fx[0], Effect::Engine(Command::Reset));
    assert_eq!(a.cache.budget, 300);
    let (text, error) = a.notice.clone().unwrap();
    assert!(error && text.contains("the saved chat's budget"), "{text}");
    // Typing goes nowhere while the list is open; Esc closes it.
    a.update(Msg::Chats(vec![entry("b", true)]));
    a.update(Msg::Action(Action::Insert('x')));
    assert!(a.input.is_empty());
    a.update(Msg::Action(Action::Stop));
    assert!(a.chats.is_none());
    typed(&mut a, "/rename Lighthouse notes");
    assert_eq!(
        a.update(Msg::Action(Action::Submit)),
        vec![Effect::Rename("Lighthouse notes".into())]
    );
}

#[test]
fn a_damaged_chat_is_listed_cannot_be_opened_and_can_be_deleted() {
    let mut a = app();
    typed(&mut a, "/chats");
    a.update(Msg::Action(Action::Submit));
    let damaged = ChatEntry {
        id: "20260101-000000-1".into(),
        title: String::new(),
        messages: 0,
        current: false,
        damaged: Some("chats/20260101-000000-1.json: empty file, not a saved chat".into()),
    };
    a.update(Msg::Chats(vec![damaged]));
    assert!(a.update(Msg::Action(Action::Submit)).is_empty());
    let (text, is_error) = a.notice.clone().unwrap();
    assert!(
        is_error && text.contains("empty file") && text.contains("Del"),
        "{text}"
    );
    assert_eq!(
        a.update(Msg::Action(Action::Delete)),
        vec![Effect::DeleteChat("20260101-000000-1".into())]
    );
}

#[test]
fn the_engine_computes_what_the_panel_on_screen_needs() {
    let mut a = app();
    let w = |attention, retention| Watch {
        attention,
        retention,
    };
    assert_eq!(a.watch(), w(false, true));
    let mut seen = Vec::new();
    for _ in 0..Panel::ALL.len() + 1 {
        a.update(Msg::Action(Action::CyclePanel));
        seen.push((a.panel, a.watch()));
    }
    assert_eq!(
        seen,
        vec![
            (Some(Panel::Cache), w(false, false)),
            (Some(Panel::Attention), w(true, false)),
            (Some(Panel::Inspector), w(false, false)),
            (None, w(false, false)),
            (Some(Panel::Retention), w(false, true)),
        ]
    );
}
