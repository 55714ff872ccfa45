"""The small trained toy video model: its procedural training clips (``scenes``); weights and training next."""
