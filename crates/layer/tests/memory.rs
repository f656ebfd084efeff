//! The conformance suite against `InMemoryChannelLayer`.

use std::sync::Arc;

use channels_layer::testing::LayerFuture;
use channels_layer::{ChannelLayer, InMemoryChannelLayer, LayerConfig};

fn make(config: LayerConfig) -> LayerFuture {
    Box::pin(async move { Arc::new(InMemoryChannelLayer::new(config)) as Arc<dyn ChannelLayer> })
}

channels_layer::conformance_suite!(make);
