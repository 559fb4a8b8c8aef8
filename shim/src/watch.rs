//! The daemon's view of its namespace's containers and image names, kept
//! from containerd's event stream, so that the launcher's image lookup at
//! `start` ([`crate::route`]) needs no call into containerd once a
//! container's creation was seen.
//!
//! A lookup costs containerd two calls (`Containers.Get`, `Images.Get`):
//! under load (concurrency 5 on two cores) the launcher waited 2.3 ms for
//! their answers, the largest part of its `start`. The daemon subscribes to
//! `/containers/*` and `/images/*` of its namespace and keeps:
//!
//! - each container's image name, from `ContainerCreate` (and
//!   `ContainerUpdate`), dropped at `ContainerDelete`;
//! - each image name's target, from an `Images.Get` it made, dropped at any
//!   event about that name.
//!
//! Both are used only for a container whose creation came on the current
//! stream. Events arrive in the order containerd published them, so by the
//! time that container's `ContainerCreate` was read, every image event
//! published before it (a re-tag the container's client saw) was read too:
//! the answer is as fresh as the client's own view of the image when it
//! made the container. An `Images.Get` that an event overtakes (the epoch
//! moved while it was in flight) is not kept. When the stream breaks,
//! everything learned from it is forgotten and lookups go to containerd
//! until a new stream delivers its first event.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::events::{ContainerCreate, ContainerDelete, ContainerUpdate};
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::types::{Descriptor, Envelope};
use prost::Message as _;

/// Containers and image names remembered at most (the oldest go first; a
/// forgotten one is looked up in containerd).
const MAX_CONTAINERS: usize = 4096;
const MAX_IMAGES: usize = 1024;
/// The longest wait before subscribing again after the stream broke.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the stream told us; see the module docs.
#[derive(Default)]
pub struct Watch {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Container id -> image name ("" for none), in order of creation.
    containers: HashMap<String, String>,
    created: VecDeque<String>,
    /// Image name -> target, from `Images.Get` answers.
    images: HashMap<String, Descriptor>,
    /// Moves at every image event and every stream change: an `Images.Get`
    /// answer is kept only if it did not move while the call was made.
    epoch: u64,
}

/// One event of the namespace, as far as the watch cares.
#[derive(Debug, PartialEq)]
enum Event {
    ContainerImage { id: String, image: String },
    ContainerGone(String),
    Image(String),
    Other,
}

fn decode(envelope: &Envelope) -> Event {
    let Some(any) = envelope.event.as_ref() else {
        return Event::Other;
    };
    let kind = any.type_url.rsplit('/').next().unwrap_or_default();
    let body = any.value.as_slice();
    match (envelope.topic.as_str(), kind) {
        ("/containers/create", "containerd.events.ContainerCreate") => {
            match ContainerCreate::decode(body) {
                Ok(e) => Event::ContainerImage {
                    id: e.id,
                    image: e.image,
                },
                Err(_) => Event::Other,
            }
        }
        ("/containers/update", "containerd.events.ContainerUpdate") => {
            match ContainerUpdate::decode(body) {
                // Unreadable: the container's image may have changed, so
                // it is not answered from memory any more.
                Err(_) => Event::Other,
                Ok(e) => Event::ContainerImage {
                    id: e.id,
                    image: e.image,
                },
            }
        }
        ("/containers/delete", "containerd.events.ContainerDelete") => {
            match ContainerDelete::decode(body) {
                Ok(e) => Event::ContainerGone(e.id),
                Err(_) => Event::Other,
            }
        }
        (topic, _) if topic.starts_with("/images/") => {
            // `ImageCreate`, `ImageUpdate`, `ImageDelete` all start with
            // the name (field 1).
            match containerd_client::services::v1::ImageDelete::decode(body) {
                Ok(e) => Event::Image(e.name),
                // A name we cannot read: forget every name.
                Err(_) => Event::Image(String::new()),
            }
        }
        _ => Event::Other,
    }
}

impl Watch {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, event: Event) {
        let mut s = self.state();
        match event {
            Event::ContainerImage { id, image } => {
                if s.containers.insert(id.clone(), image).is_none() {
                    s.created.push_back(id);
                    while s.containers.len() > MAX_CONTAINERS {
                        let Some(old) = s.created.pop_front() else {
                            break;
                        };
                        s.containers.remove(&old);
                    }
                }
            }
            Event::ContainerGone(id) => {
                s.containers.remove(&id);
                // `created` keeps the id until it comes to the front.
                if s.created.len() > 2 * MAX_CONTAINERS {
                    let State {
                        containers,
                        created,
                        ..
                    } = &mut *s;
                    created.retain(|c| containers.contains_key(c));
                }
            }
            Event::Image(name) => {
                s.epoch += 1;
                if name.is_empty() {
                    s.images.clear();
                } else {
                    s.images.remove(&name);
                }
            }
            Event::Other => {}
        }
    }

    /// Forgets everything (the stream broke or a new one starts).
    fn reset(&self) {
        let mut s = self.state();
        s.containers.clear();
        s.created.clear();
        s.images.clear();
        s.epoch += 1;
    }

    /// Container `id`'s image name ("" for none), if its creation came on
    /// the current stream.
    pub fn container_image(&self, id: &str) -> Option<String> {
        self.state().containers.get(id).cloned()
    }

    /// Image `name`'s target as last read, if no event about it came since.
    pub fn image_target(&self, name: &str) -> Option<Descriptor> {
        self.state().images.get(name).cloned()
    }

    /// The epoch to pass to [`Watch::remember_image`] with the answer of an
    /// `Images.Get` made after this call.
    pub fn epoch(&self) -> u64 {
        self.state().epoch
    }

    /// Keeps an `Images.Get` answer unless an event came while it was
    /// being made.
    pub fn remember_image(&self, name: &str, target: &Descriptor, epoch: u64) {
        let mut s = self.state();
        if s.epoch != epoch {
            return;
        }
        if s.images.len() >= MAX_IMAGES {
            s.images.clear();
        }
        s.images.insert(name.to_string(), target.clone());
    }

    /// Follows `namespace`'s events on containerd at `address` for as long
    /// as the daemon runs, subscribing again when the stream breaks: after
    /// 100 ms if the stream had delivered events, else after a pause that
    /// grows up to `MAX_BACKOFF`.
    pub async fn follow(self: Arc<Self>, address: String, namespace: String) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(100);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut delivered = false;
            match self.follow_once(&address, &namespace, &mut delivered).await {
                Ok(()) => log::debug!("containerd's event stream ended"),
                Err(e) => log::debug!("containerd's event stream: {e}"),
            }
            self.reset();
            // A stream that worked (containerd restarted, say) is followed
            // again soon; one that keeps failing, less and less often.
            if delivered {
                backoff = FIRST_BACKOFF;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn follow_once(
        &self,
        address: &str,
        namespace: &str,
        delivered: &mut bool,
    ) -> Result<(), String> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let channel = containerd_client::connect(std::path::Path::new(path))
            .await
            .map_err(|e| e.to_string())?;
        let client = containerd_client::Client::from(channel);
        // Namespaces are [A-Za-z0-9._-] (containerd validates them), so the
        // name needs no escaping inside the quotes.
        let filter = format!("namespace=={namespace:?},topic~=\"^/(containers|images)/\"");
        let req = SubscribeRequest {
            filters: vec![filter],
        };
        // Answers (headers and all) come with the first event.
        let mut stream = client
            .events()
            .subscribe(req)
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        self.reset();
        while let Some(envelope) = stream.message().await.map_err(|e| e.to_string())? {
            *delivered = true;
            if envelope.namespace == namespace {
                self.apply(decode(&envelope));
            }
        }
        Ok(())
    }
}

impl crate::image::Known for Watch {
    fn container_image(&self, id: &str) -> Option<String> {
        Watch::container_image(self, id)
    }
    fn image_target(&self, name: &str) -> Option<Descriptor> {
        Watch::image_target(self, name)
    }
    fn epoch(&self) -> u64 {
        Watch::epoch(self)
    }
    fn remember_image(&self, name: &str, target: &Descriptor, epoch: u64) {
        Watch::remember_image(self, name, target, epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::services::v1::{ImageCreate, ImageUpdate};
    use prost::Message;

    fn envelope(topic: &str, kind: &str, body: Vec<u8>) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: "ns".into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: kind.into(),
                value: body,
            }),
        }
    }

    fn target(digest: &str) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.into(),
            size: 1,
            annotations: HashMap::new(),
        }
    }

    #[test]
    fn containerds_events_are_decoded() {
        let create = ContainerCreate {
            id: "c1".into(),
            image: "img:1".into(),
            runtime: None,
        };
        assert_eq!(
            decode(&envelope(
                "/containers/create",
                "containerd.events.ContainerCreate",
                create.encode_to_vec()
            )),
            Event::ContainerImage {
                id: "c1".into(),
                image: "img:1".into()
            }
        );
        // containerd 2's type URLs carry a prefix.
        let update = ContainerUpdate {
            id: "c1".into(),
            image: "img:2".into(),
            ..Default::default()
        };
        assert_eq!(
            decode(&envelope(
                "/containers/update",
                "types.containerd.io/containerd.events.ContainerUpdate",
                update.encode_to_vec()
            )),
            Event::ContainerImage {
                id: "c1".into(),
                image: "img:2".into()
            }
        );
        let gone = ContainerDelete { id: "c1".into() };
        assert_eq!(
            decode(&envelope(
                "/containers/delete",
                "containerd.events.ContainerDelete",
                gone.encode_to_vec()
            )),
            Event::ContainerGone("c1".into())
        );
        for (topic, body) in [
            (
                "/images/create",
                ImageCreate {
                    name: "img:1".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "/images/update",
                ImageUpdate {
                    name: "img:1".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        ] {
            assert_eq!(
                decode(&envelope(topic, "containerd.events.X", body)),
                Event::Image("img:1".into())
            );
        }
        assert_eq!(
            decode(&envelope("/images/delete", "x", vec![0xff, 0xff])),
            Event::Image(String::new()),
            "an unreadable image event names every image"
        );
        assert_eq!(
            decode(&envelope(
                "/tasks/exit",
                "containerd.events.TaskExit",
                vec![]
            )),
            Event::Other
        );
    }

    #[test]
    fn containers_are_known_from_creation_to_deletion() {
        let w = Watch::default();
        assert_eq!(w.container_image("c1"), None);
        w.apply(Event::ContainerImage {
            id: "c1".into(),
            image: "img:1".into(),
        });
        assert_eq!(w.container_image("c1").as_deref(), Some("img:1"));
        w.apply(Event::ContainerImage {
            id: "c1".into(),
            image: "img:2".into(),
        });
        assert_eq!(w.container_image("c1").as_deref(), Some("img:2"));
        w.apply(Event::ContainerGone("c1".into()));
        assert_eq!(w.container_image("c1"), None);
    }

    #[test]
    fn an_image_event_forgets_the_name_and_overtakes_a_lookup_in_flight() {
        let w = Watch::default();
        let e = w.epoch();
        w.remember_image("img:1", &target("sha256:a"), e);
        w.remember_image("img:2", &target("sha256:b"), e);
        assert_eq!(w.image_target("img:1").expect("kept").digest, "sha256:a");

        w.apply(Event::Image("img:1".into()));
        assert_eq!(w.image_target("img:1"), None, "re-tagged");
        assert!(w.image_target("img:2").is_some(), "another name stays");

        // An answer read before an event came is not kept.
        let before = w.epoch();
        w.apply(Event::Image("img:3".into()));
        w.remember_image("img:1", &target("sha256:old"), before);
        assert_eq!(w.image_target("img:1"), None);

        w.apply(Event::Image(String::new()));
        assert_eq!(w.image_target("img:2"), None, "every name forgotten");
    }

    #[test]
    fn a_broken_stream_forgets_everything() {
        let w = Watch::default();
        let e = w.epoch();
        w.apply(Event::ContainerImage {
            id: "c1".into(),
            image: "img:1".into(),
        });
        w.remember_image("img:1", &target("sha256:a"), e);
        w.reset();
        assert_eq!(w.container_image("c1"), None);
        assert_eq!(w.image_target("img:1"), None);
        w.remember_image("img:1", &target("sha256:a"), e);
        assert_eq!(w.image_target("img:1"), None, "read on the old stream");
    }

    #[test]
    fn memory_is_bounded() {
        let w = Watch::default();
        for i in 0..MAX_CONTAINERS + 10 {
            w.apply(Event::ContainerImage {
                id: format!("c{i}"),
                image: "img".into(),
            });
        }
        assert_eq!(w.container_image("c0"), None, "the oldest went first");
        assert!(
            w.container_image(&format!("c{}", MAX_CONTAINERS + 9))
                .is_some()
        );
        assert_eq!(w.state().containers.len(), MAX_CONTAINERS);
        for i in 0..3 * MAX_CONTAINERS {
            w.apply(Event::ContainerImage {
                id: format!("d{i}"),
                image: "img".into(),
            });
            w.apply(Event::ContainerGone(format!("d{i}")));
        }
        assert!(w.state().created.len() <= 2 * MAX_CONTAINERS + 1);
        let e = w.epoch();
        for i in 0..MAX_IMAGES + 1 {
            w.remember_image(&format!("i{i}"), &target("sha256:a"), e);
        }
        assert!(w.state().images.len() <= MAX_IMAGES);
    }
}
